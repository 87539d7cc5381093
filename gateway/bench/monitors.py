"""Per-step cost of the monitors alone: feature extraction plus the streaming detector, per generated token.

Feeds synthetic residual states (``--layers`` captured layers of width ``--width``, a ``--window``-token
window) through :class:`monitors.features.FeatureExtractor` with the shipped calibration's mean states,
outlier dimensions and probe, and the detector, as the engine does for each token of a monitored stream.
Target: at most 1 ms per step for 30 layers and a 32-token window.
"""

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from gateway.engine.provision import DEFAULT_MODEL, served_name
from monitors.bands import LayerBand
from monitors.calibration import Calibration, load_calibration
from monitors.detector import StabilityDetector
from monitors.features import FeatureExtractor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch bench monitors``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--layers", default="30,6", help="comma-separated numbers of captured layers to time")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")


def _bands(num_layers: int) -> tuple[LayerBand, ...]:
    """``num_layers`` consecutive layers from 0, in three bands."""
    thirds = np.array_split(np.arange(num_layers), 3)
    return tuple(
        LayerBand(name, tuple(int(x) for x in rows))
        for name, rows in zip(("early", "middle", "late"), thirds, strict=True)
    )


def _calibration_for(calibration: Calibration, bands: tuple[LayerBand, ...], width: int) -> Calibration:
    """The shipped calibration, with its per-layer reference data spread over the bench's layers."""
    layers = [x for b in bands for x in b.layers]
    template_mean = next(iter(calibration.mean_states.values()), [0.0] * width)
    template_dims = max(calibration.outlier_dims.values(), key=len, default=[])
    probe = calibration.probe
    if probe is not None:
        probe = replace(probe, layers=tuple(layers[len(layers) // 2 : len(layers) // 2 + len(probe.layers)]))
    return replace(
        calibration,
        bands=bands,
        mean_states=dict.fromkeys(layers, template_mean),
        outlier_dims=dict.fromkeys(layers, template_dims),
        probe=probe,
    )


def time_steps(calibration: Calibration, width: int, steps: int, seed: int = 0) -> float:
    """Median seconds per token of extractor.push + detector.update over ``steps`` tokens."""
    extractor = FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
    detector = StabilityDetector(calibration)
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((64, len(extractor.layers), width)).astype(np.float32)
    durations = []
    for t in range(steps + calibration.window):
        started = time.perf_counter()
        detector.update(extractor.push(states[t % 64], 1.5, t % 1000))
        if t >= calibration.window:  # time only full-window steps
            durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def run(args: argparse.Namespace) -> dict:
    """Time each layer count; print and optionally write JSON."""
    shipped = load_calibration(served_name(args.model))
    results = {}
    for count in (int(x) for x in args.layers.split(",")):
        calibration = replace(_calibration_for(shipped, _bands(count), args.width), window=args.window)
        samples = [time_steps(calibration, args.width, args.steps, seed) for seed in range(args.repeats)]
        results[str(count)] = {
            "median_ms": 1000 * statistics.median(samples),
            "samples_ms": [1000 * s for s in samples],
        }
        print(f"{count:>3} layers, window {args.window}: {results[str(count)]['median_ms']:.3f} ms per token")
    summary = {"window": args.window, "width": args.width, "per_step": results}
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2))
    return summary

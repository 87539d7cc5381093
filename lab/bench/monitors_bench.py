"""Per-step cost of the monitors alone: feature extraction plus the streaming detector, per generated token.

Feeds synthetic residual states (``--layers`` captured layers of width ``--width``, a ``--window``-token
window) through :class:`monitors.features.FeatureExtractor` with the shipped calibration's mean states,
outlier dimensions and probe, and the detector, as the engine does for each token of a monitored stream.
Target: at most 1 ms per step for 30 layers and a 32-token window. ``--generations`` also times decode
steps of several concurrent generations, pushed together as the engines do (``FeatureExtractor.push_many``).
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

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch bench monitors``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--layers", default="30,6", help="comma-separated numbers of captured layers to time")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--generations", default="1,16", help="comma-separated numbers of concurrent generations")
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


def time_steps(calibration: Calibration, width: int, steps: int, generations: int = 1, seed: int = 0) -> float:
    """Median seconds per decode step (one token for each of ``generations``) of the extractors' push and
    the detectors' updates, over ``steps`` steps."""
    options = calibration.extractor_options()
    extractors = [FeatureExtractor(calibration.bands, calibration.window, **options) for _ in range(generations)]
    detectors = [StabilityDetector(calibration) for _ in range(generations)]
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((64, generations, len(extractors[0].layers), width)).astype(np.float32)
    entropies, durations = [1.5] * generations, []
    for t in range(steps + calibration.window):
        started = time.perf_counter()
        pushed = FeatureExtractor.push_many(extractors, states[t % 64], entropies, [t % 1000] * generations)
        for detector, features in zip(detectors, pushed, strict=True):
            detector.update(features)
        if t >= calibration.window:  # time only full-window steps
            durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def run(args: argparse.Namespace) -> dict:
    """Time each layer count and number of generations; print and optionally write JSON."""
    shipped = load_calibration(served_name(args.model))
    results: dict[str, dict] = {}
    for count in (int(x) for x in args.layers.split(",")):
        calibration = replace(_calibration_for(shipped, _bands(count), args.width), window=args.window)
        for generations in (int(x) for x in args.generations.split(",")):
            steps = max(args.steps // generations, 100)
            samples = [time_steps(calibration, args.width, steps, generations, seed) for seed in range(args.repeats)]
            step_ms = 1000 * statistics.median(samples)
            results.setdefault(str(count), {})[str(generations)] = {
                "median_step_ms": step_ms,
                "median_token_ms": step_ms / generations,
                "samples_step_ms": [1000 * s for s in samples],
            }
            print(
                f"{count:>3} layers, window {args.window}, {generations:>2} generations: "
                f"{step_ms:.3f} ms per step, {step_ms / generations:.3f} ms per token"
            )
    summary = {"window": args.window, "width": args.width, "per_layers_and_generations": results}
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2))
    return summary

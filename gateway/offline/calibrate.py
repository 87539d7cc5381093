"""``sinkwatch calibrate``: thresholds for the served model from its own normal generations.

Each signal's threshold is set so that at most ``target_fpr`` of normal generations (tune split) hold
it for ``persistence`` consecutive smoothed tokens; rank-floor signals share that budget across bands.
The resulting detector's false-positive rate on the same generations is measured and printed.
"""

import argparse
import datetime
import logging
import zlib
from pathlib import Path

import numpy as np

from gateway.engine.engine import EmbeddedEngine, EngineConfig
from gateway.engine.loader import load_model
from gateway.engine.provision import DEFAULT_MODEL, provision, served_name
from gateway.generation import SamplingParams
from gateway.offline.prompts import load_prompts
from gateway.offline.runner import GenerationJob, generate_all, replay_features, teacher_forced_states
from monitors.bands import captured_layers, default_bands, parse_bands
from monitors.calibration import Calibration, SignalThreshold, fit_threshold, shipped_calibration_path
from monitors.detector import REPETITION_SIGNAL, StabilityDetector, usable_values
from monitors.text import RepetitionTracker

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch calibrate``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", default="normal", help="shipped prompt set name or JSONL file")
    parser.add_argument("--split", default="tune", help="only prompts of this split are used")
    parser.add_argument("--temperatures", default="0.7,1.0", help="each prompt is sampled once per temperature")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--bands", default="", help="layer bands (default: three thirds of the model)")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--ewma-span", type=int, default=8)
    parser.add_argument("--persistence", type=int, default=4)
    parser.add_argument("--min-agreeing", type=int, default=2)
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--output", type=Path, help="default: the calibration shipped for the model")


def run(args: argparse.Namespace) -> Calibration:
    """Generate, capture, fit, measure, write."""
    name = served_name(args.model)
    loaded = load_model(provision(args.model), name)
    bands = parse_bands(args.bands) if args.bands else default_bands(loaded.num_layers)
    layers = captured_layers(bands)
    cases = load_prompts(args.prompts, args.split)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    jobs = [
        GenerationJob(
            f"{case.id}@{t}",
            case.messages,
            SamplingParams(max_tokens=args.max_tokens, temperature=t, top_p=0.95, seed=zlib.crc32(case.id.encode())),
        )
        for case in cases
        for t in temperatures
    ]
    print(f"calibrate: {len(jobs)} generations of up to {args.max_tokens} tokens on {name}")
    engine = EmbeddedEngine(loaded, EngineConfig(max_batch=args.max_batch, capture=False), bands)
    engine.start()
    try:
        records = generate_all(engine, jobs)
    finally:
        engine.shutdown()
    states = [teacher_forced_states(loaded, r, layers) for r in records if r.output_ids]
    records = [r for r in records if r.output_ids]
    all_states = np.concatenate([s.states for s in states])
    mean_states = {layer: all_states[:, i].mean(axis=0) for i, layer in enumerate(layers)}
    features = [
        replay_features(s, r.output_ids, bands, args.window, mean_states) for s, r in zip(states, records, strict=True)
    ]
    calibration = _fit(args, name, bands, mean_states, features, [r.output_ids for r in records])
    fpr = _measured_fpr(calibration, features)
    print(f"calibrate: detector fires (sink or rank_exhaustion) on {fpr:.1%} of the calibration generations")
    output = args.output or shipped_calibration_path(name)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(calibration.to_json())
    print(f"calibrate: wrote {output}")
    return calibration


def _trajectories(features: list, name: str, window: int) -> list[np.ndarray]:
    out = []
    for generation in features:
        values = [usable_values(f, window).get(name) for f in generation]
        out.append(np.array([v for v in values if v is not None]))
    return out


def _repetition_trajectories(token_ids: list[list[int]]) -> list[np.ndarray]:
    trajectories = []
    for ids in token_ids:
        tracker = RepetitionTracker()
        trajectories.append(np.array([tracker.push(t) for t in ids]))
    return trajectories


def _fit(args, name, bands, mean_states, features, token_ids) -> Calibration:
    sink_specs = [("entropy", "low"), (REPETITION_SIGNAL, "high")]
    sink_specs += [(f"{b.name}.cosine", "high") for b in bands[1:]]
    sink_specs += [(f"{b.name}.drift", "high") for b in bands[1:]]
    signals = []
    for signal, direction in sink_specs:
        trajectories = (
            _repetition_trajectories(token_ids)
            if signal == REPETITION_SIGNAL
            else _trajectories(features, signal, args.window)
        )
        threshold = fit_threshold(trajectories, direction, args.ewma_span, args.persistence, args.target_fpr)
        signals.append(SignalThreshold(signal, direction, threshold, "sink"))
    floors = {}
    for band in bands:
        trajectories = _trajectories(features, f"{band.name}.pr", args.window)
        floor = fit_threshold(trajectories, "low", args.ewma_span, args.persistence, args.target_fpr / len(bands))
        floors[band.name] = floor
        signals.append(SignalThreshold(f"{band.name}.pr", "low", floor, "rank"))
    return Calibration(
        model=name,
        window=args.window,
        bands=bands,
        ewma_span=args.ewma_span,
        persistence=args.persistence,
        min_agreeing=args.min_agreeing,
        target_fpr=args.target_fpr,
        signals=tuple(signals),
        rank_floors=floors,
        mean_states={layer: [round(float(x), 6) for x in v] for layer, v in mean_states.items()},
        n_generations=len(features),
        created=datetime.date.today().isoformat(),
    )


def _measured_fpr(calibration: Calibration, features: list) -> float:
    fired = 0
    for generation in features:
        detector = StabilityDetector(calibration)
        for step in generation:
            detector.update(step)
        fired += detector.verdict.fired
    return fired / max(len(features), 1)

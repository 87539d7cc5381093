"""What shadow recording costs (``sinkwatch bench recording``): per token, per generation, and on disk.

Runs the monitors as ``sinkwatch bench monitors`` does (synthetic residual states through the feature
extractor with the shipped calibration, and the detector) with a :class:`gateway.recording.trace.SignalTrace`
taking each token's signals, and times, per generation of ``--tokens`` tokens: the monitor step and the
trace's share of it (the per-token cost on the request's path),
building the record and serialising it (once per generation, both on the recorder's writer thread),
and the bytes of the JSON line. ``--recording DIR`` also reports the bytes per generation and per token of a
real recording.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from gateway.engine.provision import DEFAULT_MODEL, served_name
from gateway.recording.trace import SignalTrace, calibration_setup, generation_record
from monitors.calibration import Calibration, load_calibration
from monitors.detector import StabilityDetector
from monitors.features import FeatureExtractor

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch bench recording``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tokens", default="160,1024", help="comma-separated generation lengths")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recording", type=Path, help="a recording directory to measure the size of")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")


def _generation(calibration: Calibration, tokens: int, seed: int) -> tuple[float, float, SignalTrace]:
    """Median seconds per token of the monitor step (extractor and detector) and of the trace taking the
    detector's signals (the cost recording adds on the request's path), and the trace."""
    extractor = FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
    detector = StabilityDetector(calibration)
    trace = SignalTrace()
    width = len(next(iter(calibration.mean_states.values())))
    states = np.random.default_rng(seed).standard_normal((64, len(extractor.layers), width))
    steps, adds = [], []
    for t in range(tokens):
        started = time.perf_counter()
        detector.update(extractor.push(states[t % 64], 1.5, t % 1000))
        stepped = time.perf_counter()
        trace.add(detector.values)
        adds.append(time.perf_counter() - stepped)
        steps.append(stepped - started)
    return statistics.median(steps), statistics.median(adds), trace


def _record_cost(trace: SignalTrace, calibration: Calibration) -> tuple[float, float, int]:
    """Seconds to build a record, seconds to serialise it, and its bytes."""
    context = {
        "model": calibration.model,
        "backend": "embedded",
        "endpoint": "chat",
        **calibration_setup(calibration, "0" * 64),
    }
    started = time.perf_counter()
    record = generation_record(trace, context, "length", None, time.time())
    built = time.perf_counter()
    line = json.dumps(record, separators=(",", ":"), allow_nan=False)
    return built - started, time.perf_counter() - built, len(line) + 1


def _recording_size(directory: Path) -> dict:
    records = [json.loads(line) for p in directory.glob("traffic-*.jsonl") for line in p.read_text().splitlines()]
    size = sum(p.stat().st_size for p in directory.glob("traffic-*.jsonl"))
    tokens = sum(r["tokens"] for r in records)
    return {
        "generations": len(records),
        "bytes": size,
        "bytes_per_generation": round(size / max(len(records), 1)),
        "bytes_per_token": round(size / max(tokens, 1), 1),
    }


def run(args: argparse.Namespace) -> dict:
    """Time each generation length with and without recording; print and optionally write JSON."""
    calibration = load_calibration(served_name(args.model))
    results = {}
    for tokens in (int(x) for x in args.tokens.split(",")):
        timed = [_generation(calibration, tokens, seed) for seed in range(args.repeats)]
        costs = [_record_cost(trace, calibration) for _, _, trace in timed]
        step = 1e3 * statistics.median(t[0] for t in timed)
        add = 1e6 * statistics.median(t[1] for t in timed)
        results[str(tokens)] = {
            "monitor_step_ms": round(step, 4),
            "trace_add_us": round(add, 2),
            "trace_share_of_step": round(add / 1e3 / step, 4),
            "record_build_ms": round(1e3 * statistics.median(c[0] for c in costs), 3),
            "record_serialise_ms": round(1e3 * statistics.median(c[1] for c in costs), 3),
            "record_bytes": costs[0][2],
            "signals": len(timed[0][2].values),
        }
        print(
            f"{tokens:>5} tokens: monitor step {step:.3f} ms per token, the trace adds {add:.1f} us "
            f"({100 * add / 1e3 / step:.1f} %); record built in {results[str(tokens)]['record_build_ms']} ms, "
            f"serialised in {results[str(tokens)]['record_serialise_ms']} ms (both on the writer thread), "
            f"{costs[0][2]} bytes"
        )
    summary = {"per_generation_length": results}
    if args.recording is not None:
        summary["recording"] = _recording_size(args.recording)
        print(f"recording {args.recording}: {summary['recording']}")
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2))
    return summary

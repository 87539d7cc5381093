"""Embedded engine throughput: capture off vs on, and aggregate tokens/s at several concurrencies.

Runs are interleaved (off, on, off, on...) so that drift in machine load hits both alike; each figure
is the median over rounds. EOS is banned through ``logit_bias`` so every stream decodes exactly
``--tokens`` tokens. With capture on, each stream's features also run through the detector, as in
serving, so the figure includes the whole monitoring cost.
"""

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from gateway.engine.engine import EmbeddedEngine
from gateway.engine.engine_config import EngineConfig
from gateway.engine.loader import LoadedModel, load_model
from gateway.engine.provision import DEFAULT_MODEL, provision, served_name
from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams, TokenEvent
from lab.bench.figures import plot_engine
from monitors.calibration import load_calibration
from monitors.detector import StabilityDetector

__all__ = ["add_arguments", "run"]

PROMPT = ({"role": "user", "content": "Write a detailed essay about the history of sailing ships."},)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch bench engine``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per stream")
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated stream counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="write a PNG of throughput and time per token here")


async def _stream(engine: EmbeddedEngine, index: int, tokens: int, detector: StabilityDetector | None) -> int:
    eos = next(iter(engine.loaded.eos_token_ids))
    sampling = SamplingParams(max_tokens=tokens, temperature=0.8, seed=index, logit_bias={eos: -100.0})
    request = GenerationRequest(f"bench-{index}", engine.loaded.name, ChatPrompt(PROMPT), sampling)
    produced = 0
    async for event in engine.submit(request, engine.encode_prompt(request)):
        if isinstance(event, TokenEvent) and event.token_id is not None:
            produced += 1
            if detector is not None and event.features is not None:
                detector.update(event.features)
    return produced


def _tokens_per_second(loaded: LoadedModel, capture: bool, streams: int, tokens: int) -> float:
    calibration = load_calibration(loaded.name)
    config = EngineConfig(max_batch=max(streams, 1), capture=capture, window=calibration.window)
    engine = EmbeddedEngine(loaded, config, calibration.bands, calibration.extractor_options())
    engine.start()

    async def run() -> int:
        detectors = [StabilityDetector(calibration) if capture else None for _ in range(streams)]
        counts = await asyncio.gather(*(_stream(engine, i, tokens, detectors[i]) for i in range(streams)))
        return sum(counts)

    try:
        asyncio.run(_stream_once(engine))
        started = time.perf_counter()
        produced = asyncio.run(run())
        return produced / (time.perf_counter() - started)
    finally:
        engine.shutdown()


async def _stream_once(engine: EmbeddedEngine) -> None:
    """Warm-up: one short stream, so allocator and kernels are ready before timing."""
    await _stream(engine, 0, 8, None)


def run(args: argparse.Namespace) -> dict:
    """Measure, print a table, optionally write JSON."""
    loaded = load_model(provision(args.model), served_name(args.model))
    levels = [int(c) for c in args.concurrency.split(",")]
    samples: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for streams in levels:
            for capture in (False, True):
                key = f"{'on' if capture else 'off'}@{streams}"
                samples.setdefault(key, []).append(_tokens_per_second(loaded, capture, streams, args.tokens))
    results = {key: statistics.median(values) for key, values in samples.items()}
    single_off, single_on = results["off@1"], results["on@1"]
    summary = {
        "tokens_per_second": results,
        "capture_cost": 1 - single_on / single_off,
        "scaling": {str(n): results[f"on@{n}"] / single_on for n in levels},
        "samples": samples,
    }
    print(f"{'streams':>8} {'capture off':>12} {'capture on':>12}  (aggregate tokens/s, median of {args.rounds})")
    for streams in levels:
        print(f"{streams:>8} {results[f'off@{streams}']:>12.1f} {results[f'on@{streams}']:>12.1f}")
    print(f"capture + monitors cost, single stream: {summary['capture_cost']:.1%}")
    for streams in levels:
        print(f"aggregate at {streams} streams: {summary['scaling'][str(streams)]:.2f}x single stream (capture on)")
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2))
    if args.plot:
        print(f"figure: {plot_engine(samples, levels, args.plot)}")
    return summary

"""Streaming hold-back: what it costs in time to first token, and how long the gate holds text back.

Each normal prompt is served greedily (so every configuration streams the same tokens) once without
the gate (``annotate``: released as generated) and once under ``block`` per hold-back size, one request
at a time, configurations interleaved per prompt so that drift in machine load hits all alike. Timings
are taken on the gate's releases, without HTTP, from submission: ``ttft`` (first released text),
``stall`` (the longest wait between two releases) and ``held_to_end`` (the share of the answer released
only when the generation finished, e.g. because the detector stopped vouching for it).
"""

import argparse
import asyncio
import itertools
import json
import statistics
from pathlib import Path

from gateway.engine.provision import DEFAULT_MODEL
from gateway.gate.holdback import required_lag
from gateway.gate.policy import GateConfig, Policy
from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams
from lab.eval.prompts import load_prompts
from lab.gate_harness import GatedRun, run_gated, start_embedded

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch bench holdback``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=12, help="normal prompts served per configuration")
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per request")
    parser.add_argument("--holdback", default="0,auto,8", help="hold-back sizes under block ('auto': calibration's)")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")


def _measures(run: GatedRun) -> dict[str, float]:
    times = [at for at, piece in run.releases if piece]
    total = sum(len(piece) for _, piece in run.releases) or 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    return {
        "ttft": run.first_release_at or run.finished_at,
        "stall": max(gaps, default=0.0),
        "held_to_end": len(run.releases[-1][1]) / total if run.releases else 0.0,
        "fired": float(run.gate.detected is not None and run.gate.detected.fired),
    }


async def _measure(args: argparse.Namespace) -> dict:
    backend, calibration = await start_embedded(args.model)
    sizes = [required_lag(calibration) if size == "auto" else int(size) for size in args.holdback.split(",")]
    configs = {"ungated": (Policy.ANNOTATE, 0), **{f"block@{size}": (Policy.BLOCK, size) for size in sizes}}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    model = backend.model_names()[0]
    try:
        for case in load_prompts("normal")[: args.prompts]:
            request = GenerationRequest(
                f"bench-{case.id}", model, ChatPrompt(case.messages), SamplingParams(args.tokens, temperature=0.0)
            )
            for name, (policy, size) in configs.items():
                run = await run_gated(backend, calibration, request, policy, GateConfig(holdback_tokens=size))
                samples[name].append(_measures(run))
    finally:
        await backend.close()
    return {"holdback_sizes": sizes, "samples": samples}


def run(args: argparse.Namespace) -> dict:
    """Measure, print a table, optionally write JSON."""
    measured = asyncio.run(_measure(args))
    samples = measured["samples"]
    baseline = [s["ttft"] for s in samples["ungated"]]
    summary = {}
    for name, runs in samples.items():
        added = [s["ttft"] - b for s, b in zip(runs, baseline, strict=True)]
        summary[name] = {
            "ttft_median_s": statistics.median(s["ttft"] for s in runs),
            "ttft_added_median_s": statistics.median(added),
            "stall_median_s": statistics.median(s["stall"] for s in runs),
            "held_to_end_mean": statistics.fmean(s["held_to_end"] for s in runs),
            "fired": sum(s["fired"] for s in runs),
        }
    print(f"{'config':>10} {'ttft':>8} {'+ttft':>8} {'stall':>8} {'held to end':>12} {'fired':>6}  (medians, seconds)")
    for name, row in summary.items():
        print(
            f"{name:>10} {row['ttft_median_s']:>8.3f} {row['ttft_added_median_s']:>8.3f} {row['stall_median_s']:>8.3f}"
            f" {row['held_to_end_mean']:>12.1%} {int(row['fired']):>6}"
        )
    result = {"summary": summary, **measured, "prompts": args.prompts, "tokens": args.tokens}
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))
    return result

"""Which rescue strategy repairs a collapsing generation best, at what cost: ``sinkwatch eval rescue``.

Loop-prone prompts are served greedily with a repetition penalty below 1 (a setting that drives the
model into loops). Prompts whose generation the detector fires on are the cases; each case is then
served under ``rescue`` with every strategy (non-streaming, all through the real gate), and scored:

- success: the gate returned a rescued answer (not blocked) that passes the text-level sink check
  (``monitors.text.text_sink_onset`` over the whole answer) and on which the detector's last verdict did
  not fire;
- extra tokens: tokens generated and thrown away (discarded by rollbacks, withheld by a final block);
- attempts used, and how often the answer still shows a loop to the text check.

``constrain`` is the control: it resamples from the same prefix with an added instruction ("be concise,
do not repeat yourself") instead of a change of sampling.
"""

import argparse
import asyncio
import json
import statistics
import zlib
from pathlib import Path

from gateway.engine.provision import DEFAULT_MODEL
from gateway.gate.policy import GateConfig, Policy
from gateway.gate.rescue import STRATEGIES
from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams
from lab.eval.prompts import PromptCase, load_prompts
from lab.gate_harness import GatedRun, run_gated, start_embedded
from monitors.text import text_sink_onset

__all__ = ["add_arguments", "run", "score_run", "summarize"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval rescue``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", default="loop", help="prompt set (shipped name or JSONL file)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N prompts (0: all)")
    parser.add_argument("--tokens", type=int, default=96, help="max_tokens per request")
    parser.add_argument("--repetition-penalty", type=float, default=0.8, help="the loop-inducing setting")
    parser.add_argument("--attempts", type=int, default=2, help="rescue attempts per request")
    parser.add_argument("--budget", type=int, default=256, help="rescue token budget per request")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated strategies")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (the engine batches them)")
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/rescue.json"))


def _request(case: PromptCase, model: str, args: argparse.Namespace) -> GenerationRequest:
    sampling = SamplingParams(
        max_tokens=args.tokens,
        temperature=0.0,
        repetition_penalty=args.repetition_penalty,
        seed=zlib.crc32(case.id.encode()),
    )
    return GenerationRequest(f"eval-{case.id}", model, ChatPrompt(case.messages), sampling)


def score_run(run: GatedRun) -> dict:
    """One rescued request's outcome, checks, cost and answer."""
    result = run.gate.result
    final = run.gate.monitor.verdict if run.gate.monitor is not None else None
    text_sink = text_sink_onset(run.gate.completion_ids) is not None
    detector_fired = final is not None and final.fired
    rescued = result.outcome == "rescued"
    return {
        "success": rescued and not text_sink and not detector_fired,
        "rescued": rescued,
        "text_sink": text_sink,
        "detector_fired": detector_fired,
        "extra_tokens": result.discarded_tokens + result.withheld_tokens,
        "attempts": len(result.attempts) - 1,
        "completion_tokens": result.completion_tokens,
        "text": run.text,
    }


async def _evaluate(args: argparse.Namespace) -> dict:
    backend, calibration = await start_embedded(args.model)
    model = backend.model_names()[0]
    cases = load_prompts(args.prompts)[: args.limit or None]
    limiter = asyncio.Semaphore(args.concurrency)

    async def serve(case: PromptCase, policy: Policy, strategy: str) -> GatedRun:
        config = GateConfig(rescue_attempts=args.attempts, rescue_token_budget=args.budget, rescue_strategy=strategy)
        async with limiter:
            return await run_gated(backend, calibration, _request(case, model, args), policy, config, streaming=False)

    try:
        first = await asyncio.gather(*(serve(case, Policy.BLOCK, "combined") for case in cases))
        fired = [case for case, run in zip(cases, first, strict=True) if run.gate.result.outcome == "blocked"]
        pairs = [(case, strategy) for case in fired for strategy in args.strategies.split(",")]
        runs = await asyncio.gather(*(serve(case, Policy.RESCUE, strategy) for case, strategy in pairs))
    finally:
        await backend.close()
    per_strategy: dict[str, list[dict]] = {}
    for (case, strategy), run in zip(pairs, runs, strict=True):
        per_strategy.setdefault(strategy, []).append({"case": case.id, **score_run(run)})
    return {
        "prompts": len(cases),
        "cases": [case.id for case in fired],
        "blocked_texts": {case.id: run.text for case, run in zip(cases, first, strict=True) if case in fired},
        "per_strategy": per_strategy,
    }


def summarize(scores: list[dict]) -> dict:
    """Rates and means over one strategy's cases."""
    if not scores:
        return {"cases": 0}
    return {
        "cases": len(scores),
        "success_rate": statistics.fmean(s["success"] for s in scores),
        "rescued_rate": statistics.fmean(s["rescued"] for s in scores),
        "text_sink_rate": statistics.fmean(s["text_sink"] for s in scores),
        "detector_fired_rate": statistics.fmean(s["detector_fired"] for s in scores),
        "extra_tokens_mean": statistics.fmean(s["extra_tokens"] for s in scores),
        "attempts_mean": statistics.fmean(s["attempts"] for s in scores),
        "completion_tokens_mean": statistics.fmean(s["completion_tokens"] for s in scores),
    }


def run(args: argparse.Namespace) -> dict:
    """Evaluate, print a table, write JSON."""
    measured = asyncio.run(_evaluate(args))
    summary = {name: summarize(scores) for name, scores in measured["per_strategy"].items()}
    print(
        f"{len(measured['cases'])} of {measured['prompts']} prompts fired the detector (greedy, "
        f"repetition_penalty {args.repetition_penalty}, max_tokens {args.tokens})"
    )
    print(f"{'strategy':>11} {'success':>8} {'rescued':>8} {'text sink':>10} {'det. fired':>11} {'extra tok':>10}")
    for name, row in summary.items():
        if row["cases"]:
            print(
                f"{name:>11} {row['success_rate']:>8.0%} {row['rescued_rate']:>8.0%} {row['text_sink_rate']:>10.0%}"
                f" {row['detector_fired_rate']:>11.0%} {row['extra_tokens_mean']:>10.1f}"
            )
    settings = {k: v for k, v in vars(args).items() if k not in ("handler", "results") and not callable(v)}
    result = {"summary": summary, "settings": {k: str(v) for k, v in settings.items()}, **measured}
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=1))
    return result

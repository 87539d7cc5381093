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

With ``--inducers``, each prompt is served under every loop inducer a client can set (the conditions of
the production-like corpus: ``repetition_penalty`` below 1, negative frequency or presence penalty, a
positive logit bias), and the results are also broken down per inducer, with what each rescue
neutralised.
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
from lab.eval.corpus import INDUCERS, Condition
from lab.eval.labels import RubricLabel, load_rubric_labels, rescue_labels_path
from lab.eval.prompts import PromptCase, load_prompts
from lab.gate_harness import GatedRun, run_gated, start_embedded
from monitors.text import text_sink_onset

__all__ = ["add_arguments", "healthy_by_hand", "run", "score_run", "summarize"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval rescue``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", default="loop", help="comma-separated prompt sets (shipped names or JSONL files)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N prompts of each set (0: all)")
    parser.add_argument("--tokens", type=int, default=96, help="max_tokens per request")
    parser.add_argument("--repetition-penalty", type=float, default=0.8, help="the loop-inducing setting")
    parser.add_argument("--attempts", type=int, default=2, help="rescue attempts per request")
    parser.add_argument("--budget", type=int, default=256, help="rescue token budget per request")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated strategies")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (the engine batches them)")
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/rescue.json"))
    parser.add_argument(
        "--inducers",
        default="",
        help="serve every prompt under these corpus inducer conditions ('all', or names such as greedy-freq-1.0) "
        "instead of --repetition-penalty",
    )
    parser.add_argument("--split", choices=("tune", "test"), help="only the prompts of this split")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="serve nothing: recount --results against the hand labels read since (and redraw the figure)",
    )
    parser.add_argument(
        "--with",
        dest="with_results",
        type=Path,
        nargs="*",
        default=[],
        help="with --rescore: further results files, recounted too and drawn in the same figure",
    )
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"), help="where the figure goes")


def inducer_conditions(spec: str) -> list[Condition]:
    """The corpus inducer conditions named by ``--inducers`` (all of them for ``all``)."""
    if spec == "all":
        return list(INDUCERS)
    named = {c.name: c for c in INDUCERS}
    return [named[name] for name in spec.split(",") if name]


def _request(
    case: PromptCase, model: str, args: argparse.Namespace, condition: Condition | None, bias_token: int | None
) -> GenerationRequest:
    if condition is None:
        sampling = SamplingParams(
            max_tokens=args.tokens,
            temperature=0.0,
            repetition_penalty=args.repetition_penalty,
            seed=zlib.crc32(case.id.encode()),
        )
        return GenerationRequest(f"eval-{case.id}", model, ChatPrompt(case.messages), sampling)
    sampling = SamplingParams(
        max_tokens=args.tokens,
        temperature=condition.temperature,
        top_p=condition.top_p,
        repetition_penalty=condition.repetition_penalty,
        frequency_penalty=condition.frequency_penalty,
        presence_penalty=condition.presence_penalty,
        logit_bias={bias_token: condition.bias} if condition.bias_text and bias_token is not None else {},
        seed=zlib.crc32(f"{case.id}/{condition.name}".encode()),
    )
    return GenerationRequest(f"eval-{case.id}-{condition.name}", model, ChatPrompt(case.messages), sampling)


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
        "neutralised": sorted({name for attempt in result.attempts for name in attempt.neutralised}),
        "text": run.text,
    }


async def _evaluate(args: argparse.Namespace) -> dict:
    backend, calibration = await start_embedded(args.model)
    model = backend.model_names()[0]
    prompts = [p for name in args.prompts.split(",") for p in load_prompts(name, args.split)[: args.limit or None]]
    conditions = inducer_conditions(args.inducers)
    cases = [(p, c) for p in prompts for c in conditions] if conditions else [(p, None) for p in prompts]
    bias_token = backend.engine.loaded.tokenizer.encode(" the", add_special_tokens=False)[0] if conditions else None
    limiter = asyncio.Semaphore(args.concurrency)

    def case_id(case: tuple[PromptCase, Condition | None]) -> str:
        prompt, condition = case
        return prompt.id if condition is None else f"{prompt.id}@{condition.name}"

    async def serve(case: tuple[PromptCase, Condition | None], policy: Policy, strategy: str) -> GatedRun:
        config = GateConfig(rescue_attempts=args.attempts, rescue_token_budget=args.budget, rescue_strategy=strategy)
        request = _request(case[0], model, args, case[1], bias_token)
        async with limiter:
            return await run_gated(backend, calibration, request, policy, config, streaming=False)

    try:
        first = await asyncio.gather(*(serve(case, Policy.BLOCK, "combined") for case in cases))
        fired = [case for case, run in zip(cases, first, strict=True) if run.gate.result.outcome == "blocked"]
        pairs = [(case, strategy) for case in fired for strategy in args.strategies.split(",")]
        runs = await asyncio.gather(*(serve(case, Policy.RESCUE, strategy) for case, strategy in pairs))
    finally:
        await backend.close()
    per_strategy: dict[str, list[dict]] = {}
    per_inducer: dict[str, list[dict]] = {}
    per_kind: dict[str, list[dict]] = {}
    for (case, strategy), run in zip(pairs, runs, strict=True):
        condition = case[1] or Condition("client", 0.0, repetition_penalty=args.repetition_penalty)
        inducer = condition.inducer
        score = {"case": case_id(case), "inducer": inducer, "kind": case[0].kind, **score_run(run)}
        per_strategy.setdefault(strategy, []).append(score)
        per_inducer.setdefault(f"{strategy}/{inducer}", []).append(score)
        per_kind.setdefault(f"{strategy}/{case[0].kind}", []).append(score)
    return {
        "prompts": len(prompts),
        "requests": len(cases),
        "cases": [case_id(case) for case in fired],
        "blocked_texts": {case_id(c): run.text for c, run in zip(cases, first, strict=True) if c in fired},
        "per_strategy": per_strategy,
        "per_inducer": per_inducer,
        "per_kind": per_kind,
    }


def healthy_by_hand(scores: list[dict], run_name: str, labels: dict[str, RubricLabel]) -> dict:
    """Of the cases whose rescued answer was read: how many are healthy by the rubric. A case the gate
    blocked in the end counts as not rescued."""
    judged = [s for s in scores if not s["rescued"] or f"{run_name}:{s['case']}" in labels]
    healthy = [s for s in judged if s["rescued"] and labels[f"{run_name}:{s['case']}"].label == "healthy"]
    return {
        "cases_judged": len(judged),
        "rescued_healthy_by_hand": len(healthy),
        "rate": round(len(healthy) / len(judged), 4) if judged else None,
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


def _grouped_summaries(measured: dict, run_name: str) -> dict[str, dict]:
    """Per inducer and per traffic type (``summary_per_inducer``, ``summary_per_kind``): the rates and the
    hand-label counts of each group of cases."""
    hand = load_rubric_labels(rescue_labels_path())
    summaries = {}
    for group in ("inducer", "kind"):
        summaries[f"summary_per_{group}"] = {
            name: {**summarize(scores), "hand_labels": healthy_by_hand(scores, run_name, hand)}
            for name, scores in measured.get(f"per_{group}", {}).items()
        }
    return summaries


def rescore(args: argparse.Namespace) -> dict:
    """The per-inducer and per-traffic-type hand-label counts of earlier runs (``--results`` and any
    ``--with``), recounted and written back, and drawn in one figure."""
    merged: dict[str, dict] = {"summary_per_inducer": {}, "summary_per_kind": {}}
    for path in (args.results, *args.with_results):
        result = json.loads(path.read_text())
        result.update(_grouped_summaries(result, path.stem))
        path.write_text(json.dumps(result, indent=1))
        for group, rows in merged.items():
            rows.update(result[group])
    for rows in merged.values():
        for name, row in rows.items():
            print(f"{name:>32} {row['cases']:>3} cases {row['hand_labels']}")
    from lab.eval.verdict_plots import plot_rescue

    merged["figure"] = plot_rescue(merged["summary_per_inducer"], merged["summary_per_kind"], args.figures)
    return merged


def run(args: argparse.Namespace) -> dict:
    """Evaluate, print a table, write JSON (or, with ``--rescore``, recount an earlier run)."""
    if args.rescore:
        return rescore(args)
    measured = asyncio.run(_evaluate(args))
    summary = {name: summarize(scores) for name, scores in measured["per_strategy"].items()}
    grouped = _grouped_summaries(measured, args.results.stem if args.results else "rescue")
    by_inducer = grouped["summary_per_inducer"]
    print(f"{len(measured['cases'])} of {measured['requests']} requests fired the detector (max_tokens {args.tokens})")
    print(f"{'strategy':>11} {'success':>8} {'rescued':>8} {'text sink':>10} {'det. fired':>11} {'extra tok':>10}")
    for name, row in summary.items():
        if row["cases"]:
            print(
                f"{name:>11} {row['success_rate']:>8.0%} {row['rescued_rate']:>8.0%} {row['text_sink_rate']:>10.0%}"
                f" {row['detector_fired_rate']:>11.0%} {row['extra_tokens_mean']:>10.1f}"
            )
    settings = {k: v for k, v in vars(args).items() if k not in ("handler", "results") and not callable(v)}
    result = {
        "summary": summary,
        **grouped,
        "settings": {k: str(v) for k, v in settings.items()},
        **measured,
    }
    if args.inducers:
        from lab.eval.verdict_plots import plot_rescue

        result["figure"] = plot_rescue(by_inducer, grouped["summary_per_kind"], args.figures)
        for name, row in by_inducer.items():
            print(f"{name:>32} {row['cases']:>3} cases {row.get('success_rate', 0):>5.0%} pass the automatic check")
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=1))
    return result

"""Rank-exhaustion stressors served through a running gateway: what the verdict does on real requests.

The offline stressors (:mod:`lab.eval.rank_stress`) read one window at a short answer's end that holds the
prompt's last states; the served detector sees only the answer's own states and judges a window once it is
full (32 tokens). This sends the scored task's items (:mod:`lab.eval.rank_tasks`) with the first ``n``
stacked constraints, or at a sampling temperature, with the official client under ``annotate``, and counts
per level what the gateway reported: each verdict, the requests whose report names a ``rank`` signal
(``<band>.rank_margin``) among its reasons (a visible loop, ``sink``, names it beside the sink signals), the
band lows of the rank margin, and accuracy. Most scored answers of a chat model are a line long, too short
to fill the window, so ``--questions open`` sends the ``normal`` prompt set's open questions instead (long
answers, no score). A chat model gets the constraints as its system prompt; a base model the offline
stressors' plain text (``<rules>\\n\\nQuestion: ...\\nAnswer:``) on ``/v1/completions``.
"""

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai

from lab.eval.prompts import load_prompts
from lab.eval.rank_floors import wilson
from lab.eval.rank_tasks import ScoredItem, scored_items, stacked_constraints

__all__ = ["Level", "add_arguments", "levels_of", "open_questions", "request_body", "run", "summarise"]

RANK_SIGNAL_SUFFIX = ".rank_margin"
JUDGED_TOKENS = 32  # the served window: an answer shorter than this gets no window statistic


@dataclass(frozen=True)
class Level:
    """One stressor level: how many stacked constraints, at which temperature."""

    stressor: str
    constraints: int
    temperature: float

    @property
    def name(self) -> str:
        return f"{self.stressor}={self.constraints if self.stressor == 'constraints' else self.temperature:g}"


def levels_of(constraints: Sequence[int], temperatures: Sequence[float]) -> list[Level]:
    """Constraint levels (greedy) and temperature levels (no constraints)."""
    return [Level("constraints", n, 0.0) for n in constraints] + [Level("temperature", 0, t) for t in temperatures]


def open_questions(count: int) -> list[str]:
    """The first ``count`` user questions of the ``normal`` set's test split (answers of a paragraph or more)."""
    cases = load_prompts("normal", "test")[:count]
    return [next(m["content"] for m in case.messages if m["role"] == "user") for case in cases]


def request_body(model: str, chat: bool, question: str, level: Level, max_tokens: int, seed: int) -> dict:
    """The request for one question at one level (``seed`` only matters when sampled)."""
    rules = "\n".join(stacked_constraints()[: level.constraints])
    body = {"model": model, "max_tokens": max_tokens, "temperature": level.temperature, "seed": seed}
    if chat:
        system = rules or "You are a helpful assistant."
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return {**body, "messages": messages}
    return {**body, "prompt": f"{rules}\n\nQuestion: {question}\nAnswer:"}


def _send(client: openai.OpenAI, chat: bool, body: dict) -> dict:
    """One request under ``annotate``: its text, length and stability report."""
    headers = {"x-sinkwatch-policy": "annotate"}
    if chat:
        response = client.chat.completions.create(**body, extra_headers=headers)
        text = response.choices[0].message.content or ""
    else:
        response = client.completions.create(**body, extra_headers=headers)
        text = response.choices[0].text
    tokens = response.usage.completion_tokens if response.usage else 0
    return {"text": text, "tokens": tokens, "stability": response.model_extra.get("stability") or {}}


def summarise(level: Level, answers: Sequence[dict], items: Sequence[ScoredItem] | None = None) -> dict:
    """Per level: verdict counts, requests whose rank signal fired (with a Wilson interval) of all and of
    those long enough to be judged (a full window), the median of each band's lowest rank margin, and the
    accuracy when the questions are ``items``."""
    verdicts = Counter(a["stability"].get("verdict", "none") for a in answers)
    rank_fired = [
        any(r["signal"].endswith(RANK_SIGNAL_SUFFIX) for r in a["stability"].get("reasons", [])) for a in answers
    ]
    judged = [a["stability"].get("tokens_monitored", 0) >= JUDGED_TOKENS for a in answers]
    bands: dict[str, list[float]] = {}
    for answer in answers:
        for band, report in (answer["stability"].get("bands") or {}).items():
            if report.get("rank_margin_min") is not None:
                bands.setdefault(band, []).append(report["rank_margin_min"])
    summary = {
        "level": level.name,
        "stressor": level.stressor,
        "constraints": level.constraints,
        "temperature": level.temperature,
        "requests": len(answers),
        "verdicts": dict(sorted(verdicts.items())),
        "rank_fired": int(sum(rank_fired)),
        "rank_fired_ci95": wilson(int(sum(rank_fired)), len(answers)),
        "judged": int(sum(judged)),
        "rank_fired_of_judged": int(sum(f and j for f, j in zip(rank_fired, judged, strict=True))),
        "rank_margin_min_median": {band: round(float(np.median(v)), 3) for band, v in sorted(bands.items())},
        "mean_tokens": round(float(np.mean([a["tokens"] for a in answers])), 1),
    }
    if items is not None:
        correct = sum(item.correct(a["text"]) for item, a in zip(items, answers, strict=True))
        summary |= {"accuracy": correct / len(answers), "accuracy_ci95": wilson(correct, len(answers))}
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval rank-served``."""
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the gateway's API")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="the model name the gateway serves")
    parser.add_argument("--completions", action="store_true", help="a base model: plain-text /v1/completions")
    parser.add_argument("--constraints", default="0,10,20,30,40,50", help="constraint levels (greedy)")
    parser.add_argument("--temperatures", default="1.0,1.8", help="temperature levels (no constraints)")
    parser.add_argument("--questions", choices=("scored", "open"), default="scored")
    parser.add_argument("--per-task", type=int, default=10, help="scored items of each task (at most 10; 3 tasks)")
    parser.add_argument("--open", type=int, default=30, help="open questions sent under --questions open")
    parser.add_argument("--max-tokens", type=int, default=96, help="room to fill the 32-token window")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--output", type=Path, default=Path("rank-served.json"), help="the per-level summary (JSON); answers beside it"
    )


def _numbers(text: str, kind: type) -> list:
    return [kind(part) for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace) -> None:
    """Send every level's items, print one line per level, write the summaries and every answer."""
    client = openai.OpenAI(base_url=args.base_url, api_key="sinkwatch", max_retries=0, timeout=600)
    chat = not args.completions
    items = scored_items(args.per_task) if args.questions == "scored" else None
    questions = [item.question for item in items] if items is not None else open_questions(args.open)
    summaries, answers_out = [], []
    for level in levels_of(_numbers(args.constraints, int), _numbers(args.temperatures, float)):
        bodies = [request_body(args.model, chat, q, level, args.max_tokens, n) for n, q in enumerate(questions)]
        with ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(lambda body: _send(client, chat, body), bodies))
        summary = summarise(level, answers, items)
        summaries.append(summary)
        answers_out += [{"level": level.name, "question": q, **a} for q, a in zip(questions, answers, strict=True)]
        print(
            f"{level.name}\tverdicts {summary['verdicts']}\trank fired {summary['rank_fired']}/{len(answers)}"
            f" ({summary['rank_fired_of_judged']}/{summary['judged']} judged)"
            f"\tmargins {summary['rank_margin_min_median']}\taccuracy {summary.get('accuracy')}",
            flush=True,
        )
    result = {"model": args.model, "questions": args.questions, "max_tokens": args.max_tokens, "levels": summaries}
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    args.output.with_suffix(".answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers_out))

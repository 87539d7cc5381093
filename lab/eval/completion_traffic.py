"""Plain-text completions traffic for a base model (no chat template), sent through a running gateway.

A base model such as Gemma 3 270M is served on ``/v1/completions`` only; this replays the shipped prompt sets'
user texts as completions prompts (``Q: ... A:``), sampled and greedy, plus the loop inducers a client can set
(a negative ``frequency_penalty`` at temperature 0) on the induce prompts, so that a recording made with
``--record-dir`` holds ordinary answers and a few loops. Used to calibrate Gemma from its own traffic
(docs/EVALUATION.md, "Calibrating an uncalibrated model from traffic").
"""

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from lab.eval.prompts import PromptCase, load_prompts
from lab.eval.record_traffic import TrafficRequest

__all__ = ["add_arguments", "completion_requests", "run", "send"]

# Sets with ordinary answers, and the one whose prompts are sent under the loop inducers.
ORDINARY_SETS = ("normal", "production", "enumeration")
INDUCED_SET = "induce"
INDUCER_PENALTIES = (-1.0, -2.0)  # frequency_penalty at temperature 0: the stronger, the sooner the loop
SEED_STRIDE = 10_000  # an extra sample's seed: the prompt's number plus this times the sample's number


def _prompt(case: PromptCase) -> str:
    question = next(m["content"] for m in case.messages if m["role"] == "user")
    return f"Q: {question}\nA:"


def completion_requests(
    model: str,
    split: str | None,
    per_set: int,
    max_tokens: int,
    induced: int,
    offset: tuple[int, int] = (0, 0),
    samples: int = 1,
) -> list[TrafficRequest]:
    """``per_set`` prompts of every ordinary set (alternately sampled at 0.8 and greedy, each followed by
    ``samples - 1`` more answers sampled at 0.8 with other seeds) and ``induced`` induce prompts under each
    inducer penalty, of ``split`` (None: both); ``offset``: how many prompts of each ordinary set and of the
    induce set are skipped (a held-out batch after a recorded one). The sets take turns prompt by prompt, a
    prompt's answers are sent together, and the loops are spread through: any time split of the recording
    holds every kind of traffic and no prompt on both sides but at its edge."""
    skip, skip_induced = offset
    per_prompt: list[list[list[TrafficRequest]]] = []
    for name in ORDINARY_SETS:
        per_prompt.append([])
        for number, case in enumerate(load_prompts(name, split)[skip : skip + per_set]):
            per_prompt[-1].append(_answers(model, case, number, max_tokens, samples))
    ordinary = [request for answers in _taking_turns(per_prompt) for request in answers]
    induced_requests = []
    for case in load_prompts(INDUCED_SET, split)[skip_induced : skip_induced + induced]:
        for penalty in INDUCER_PENALTIES:
            body = {"model": model, "prompt": _prompt(case), "max_tokens": max_tokens, "temperature": 0.0}
            body["frequency_penalty"] = penalty
            induced_requests.append(TrafficRequest(f"{case.id}:fp{penalty}", "induced", body))
    return _interleaved(ordinary, induced_requests)


def _answers(model: str, case: PromptCase, number: int, max_tokens: int, samples: int) -> list[TrafficRequest]:
    """The requests for one ordinary prompt: sampled (even ``number``) or greedy, then extra sampled ones."""
    base = {"model": model, "prompt": _prompt(case), "max_tokens": max_tokens}
    first_sampled = number % 2 == 0
    answers = [
        TrafficRequest(
            f"{case.id}:{'sampled' if first_sampled else 'greedy'}",
            "ordinary",
            {**base, "seed": number, "temperature": 0.8 if first_sampled else 0.0},
        )
    ]
    for extra in range(1, samples):
        body = {**base, "seed": number + extra * SEED_STRIDE, "temperature": 0.8}
        answers.append(TrafficRequest(f"{case.id}:sampled-{extra}", "ordinary", body))
    return answers


def _taking_turns(groups: list[list[list[TrafficRequest]]]) -> list[list[TrafficRequest]]:
    """One item of each group in turn until every group is spent (round robin over unequal lengths)."""
    longest = max((len(group) for group in groups), default=0)
    return [group[index] for index in range(longest) for group in groups if index < len(group)]


def _interleaved(ordinary: list[TrafficRequest], induced: list[TrafficRequest]) -> list[TrafficRequest]:
    """The induced requests spread evenly through the ordinary ones (a time split then holds loops on both
    sides)."""
    step = max(1, len(ordinary) // max(1, len(induced)))
    out = list(ordinary)
    for number, request in enumerate(induced):
        out.insert(min(len(out), (number + 1) * (step + 1) - 1), request)
    return out


def send(base_url: str, requests: list[TrafficRequest], concurrency: int) -> dict[str, dict]:
    """Send ``requests`` with the official client, ``concurrency`` at a time; per key the verdict header, the
    text, the finish reason, the completion tokens and the stability report (none under observe)."""
    client = openai.OpenAI(base_url=base_url, api_key="sinkwatch", max_retries=0, timeout=600)

    def one(request: TrafficRequest) -> tuple[str, dict]:
        raw = client.completions.with_raw_response.create(**request.body)
        completion = raw.parse()
        choice = completion.choices[0]
        answer = {"verdict": raw.headers.get("x-sinkwatch-verdict", ""), "finish_reason": choice.finish_reason}
        answer["tokens"] = completion.usage.completion_tokens if completion.usage else None
        return request.key, {**answer, "text": choice.text, "stability": completion.model_extra.get("stability")}

    with ThreadPoolExecutor(concurrency) as pool:
        return dict(pool.map(one, requests))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval record-completions``."""
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the gateway's API")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--split", default=None, help="prompt split sent (default: both)")
    parser.add_argument("--per-set", type=int, default=24, help="prompts of each ordinary set")
    parser.add_argument("--induced", type=int, default=4, help="induce prompts under each inducer")
    parser.add_argument("--offset", type=int, default=0, help="prompts of each ordinary set skipped (sent before)")
    parser.add_argument("--induced-offset", type=int, default=0, help="induce prompts skipped (sent before)")
    parser.add_argument("--samples", type=int, default=1, help="answers per ordinary prompt (extra ones sampled)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write every answer here, one JSON line each")


def run(args: argparse.Namespace) -> None:
    """Send the traffic, print each request's verdict, and write the answers to ``--output``."""
    requests = completion_requests(
        args.model,
        args.split,
        args.per_set,
        args.max_tokens,
        args.induced,
        (args.offset, args.induced_offset),
        args.samples,
    )
    answers = send(args.base_url, requests, args.concurrency)
    for request in requests:
        print(f"{request.traffic}\t{request.key}\t{answers[request.key]['verdict']}")
    if args.output is not None:
        lines = [json.dumps({"key": r.key, "traffic": r.traffic, **answers[r.key]}) for r in requests]
        args.output.write_text("\n".join(lines) + "\n")

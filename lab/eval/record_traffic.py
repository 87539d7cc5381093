"""Send the production-like prompt sets through a running gateway as client traffic (``sinkwatch eval record``).

Point it at a gateway serving under ``--policy observe --record-dir DIR``: the recording it leaves is what
``sinkwatch calibrate --from-traffic DIR`` fits on. The requests are those of the production-like corpus
(docs/EVALUATION.md, "Verdicts") for one split, through the official ``openai`` client, several at a time:
ordinary prompts sampled (``--samples`` seeds at temperature 0.7) and greedy, long enumerations greedy, and the
loop-inducing prompts under each inducer a client can set (the few sinks real traffic has). Human documents
are teacher-forced in the corpus, not generated, and are left out.
"""

import argparse
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lab.eval.corpus import HUMAN_SET, PRODUCTION_CONDITIONS, Condition
from lab.eval.prompts import PromptCase, load_prompts

__all__ = ["TrafficRequest", "add_arguments", "requests_for", "run"]


@dataclass(frozen=True)
class TrafficRequest:
    """One request of the replayed traffic (a chat or a completions body), and what it stands for."""

    key: str
    traffic: str
    body: dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval record``."""
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the gateway's API")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--split", default="tune", help="prompt split sent (the other one stays held out)")
    parser.add_argument("--samples", type=int, default=2, help="sampled answers per ordinary prompt")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bias-token", type=int, help="token id of ' the' for the logit-bias inducer (else left out)")


def _body(case: PromptCase, condition: Condition, model: str, max_tokens: int, seed: int, bias: int | None) -> dict:
    body = {
        "model": model,
        "messages": list(case.messages),
        "max_tokens": case.params.get("max_tokens", max_tokens),
        "temperature": condition.temperature,
        "top_p": condition.top_p,
        "frequency_penalty": condition.frequency_penalty,
        "presence_penalty": condition.presence_penalty,
        "seed": seed,
    }
    if condition.repetition_penalty != 1.0:
        body["repetition_penalty"] = condition.repetition_penalty
    if condition.bias_text is not None:
        body["logit_bias"] = {str(bias): condition.bias}
    return body


def requests_for(args: argparse.Namespace) -> list[TrafficRequest]:
    """Every request of the split: each prompt set under its conditions, sampled ones ``--samples`` times."""
    out = []
    for prompt_set, conditions in PRODUCTION_CONDITIONS.items():
        if prompt_set == HUMAN_SET:
            continue
        for case in load_prompts(prompt_set, args.split):
            for condition in conditions:
                if condition.bias_text is not None and args.bias_token is None:
                    continue
                for sample in range(args.samples if condition.temperature > 0 else 1):
                    key = f"{case.id}@{condition.name}#{sample}"
                    body = _body(
                        case, condition, args.model, args.max_tokens, zlib.crc32(key.encode()), args.bias_token
                    )
                    out.append(TrafficRequest(key, case.kind, body))
    return out


def run(args: argparse.Namespace) -> dict[str, int]:
    """Send every request; count the answers by finish reason."""
    from openai import OpenAI

    client = OpenAI(base_url=args.base_url, api_key="sinkwatch-record", max_retries=2, timeout=600)
    requests = requests_for(args)
    print(f"record: sending {len(requests)} requests to {args.base_url}")

    def send(request: TrafficRequest) -> str:
        body = dict(request.body)
        extra = {name: body.pop(name) for name in ("repetition_penalty",) if name in body}
        answer = client.chat.completions.create(**body, extra_body=extra or None)
        return answer.choices[0].finish_reason

    finishes: dict[str, int] = {}
    with ThreadPoolExecutor(args.concurrency) as pool:
        for finish in pool.map(send, requests):
            finishes[finish] = finishes.get(finish, 0) + 1
    print(f"record: answers by finish reason {finishes}")
    return finishes

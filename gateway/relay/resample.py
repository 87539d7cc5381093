"""The body of a rescue on the relay path: the failed choice asked for again, from its start, alone.

A relayed choice may be a partial structure (tool-call arguments, a JSON-schema answer) that no
continuation request can resume, so a rescue resamples the whole choice: the client's body with ``n: 1``
and the configured rescue strategy's changes (temperature and seed, penalties, a bias against the loop's
tokens, or the constraint in the system message), applied by the same strategies the embedded gate uses,
after the client's own inducers of repetition are taken out (a negative frequency or presence penalty, a
repetition penalty below 1, a positive bias on the loop's tokens).
"""

from dataclasses import replace

from gateway.gate.rescue import STRATEGIES, neutralise
from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams, TextPrompt

__all__ = ["body_sampling", "continuable", "continuation_body", "resample_body"]


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _count(body: dict, name: str) -> int | None:
    value = body.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def body_sampling(body: dict) -> SamplingParams:
    """The sampling a client's OpenAI body asks for, read as sent (a field missing or of another type: its
    default; the token limit: ``max_completion_tokens``, else ``max_tokens``, else none)."""
    seed = body.get("seed")
    bias = body.get("logit_bias") if isinstance(body.get("logit_bias"), dict) else {}
    return SamplingParams(
        max_tokens=_count(body, "max_completion_tokens") or _count(body, "max_tokens"),
        temperature=_number(body, "temperature", 1.0),
        top_p=_number(body, "top_p", 1.0),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        presence_penalty=_number(body, "presence_penalty", 0.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0),
        logit_bias={int(k): v for k, v in bias.items() if str(k).isdigit()},
    )


def resample_body(body: dict, strategy: str, failed_ids: list[int], attempt: int) -> tuple[dict, tuple[str, ...]]:
    """The client's ``body`` for resampling one choice (``attempt`` 1, 2, ...) with ``strategy``'s changes, and
    the client's sampling parameters taken out first because they push toward repetition (as the embedded
    gate does: :func:`~gateway.gate.rescue.neutralise`)."""
    messages = body.get("messages")
    prompt = ChatPrompt(tuple(messages)) if isinstance(messages, list) else TextPrompt(text="")
    original = GenerationRequest("resample", str(body.get("model")), prompt, body_sampling(body))
    sampling, neutralised = neutralise(original.sampling, failed_ids)
    changed = STRATEGIES[strategy](replace(original, sampling=sampling), failed_ids, attempt)
    sampling, before = changed.sampling, original.sampling
    out = {key: value for key, value in body.items() if key != "n"}
    out["temperature"] = sampling.temperature  # stated even when unchanged: the upstream's default may differ
    for name in ("seed", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        if getattr(sampling, name) != getattr(before, name):
            out[name] = getattr(sampling, name)
    if sampling.logit_bias != before.logit_bias:
        out["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias.items()}
    if isinstance(changed.prompt, ChatPrompt) and changed.prompt != prompt:
        out["messages"] = list(changed.prompt.messages)
    return out, neutralised


# What makes an answer a structure a continuation cannot resume: tools, a JSON format, vLLM's guided output.
_STRUCTURED = (
    "tools",
    "functions",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)


def continuable(body: dict) -> bool:
    """Whether the answer to ``body`` is plain text (chat or a text prompt), which a continuation can resume."""
    response_format = body.get("response_format")
    if any(body.get(name) for name in _STRUCTURED) or (
        isinstance(response_format, dict) and response_format.get("type") not in (None, "text")
    ):
        return False
    return isinstance(body.get("messages"), list) or isinstance(body.get("prompt"), str)


def continuation_body(body: dict, accepted: str, accepted_tokens: int) -> dict:
    """``body`` (a resample's) continuing the ``accepted`` text: a chat ends with it as a partial assistant
    message (``continue_final_message``), a text prompt ends with it; the token limit shrinks by it."""
    out = dict(body)
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(out.get(name), int) and not isinstance(out.get(name), bool):
            out[name] = max(out[name] - accepted_tokens, 1)
    if isinstance(body.get("messages"), list):
        out["messages"] = [*body["messages"], {"role": "assistant", "content": accepted}]
        out.update(continue_final_message=True, add_generation_prompt=False)
    else:
        out["prompt"] = body["prompt"] + accepted
    return out

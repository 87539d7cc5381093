"""The body of a rescue on the relay path: the failed choice asked for again, from its start, alone.

A relayed choice may be a partial structure (tool-call arguments, a JSON-schema answer) that no
continuation request can resume, so a rescue resamples the whole choice: the client's body with ``n: 1``
and the configured rescue strategy's changes (temperature and seed, penalties, a bias against the loop's
tokens, or the constraint in the system message), applied by the same strategies the embedded gate uses.
"""

from gateway.gate.rescue import STRATEGIES
from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams, TextPrompt

__all__ = ["resample_body"]


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _sampling(body: dict) -> SamplingParams:
    seed = body.get("seed")
    bias = body.get("logit_bias") if isinstance(body.get("logit_bias"), dict) else {}
    return SamplingParams(
        max_tokens=None,
        temperature=_number(body, "temperature", 1.0),
        top_p=_number(body, "top_p", 1.0),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        presence_penalty=_number(body, "presence_penalty", 0.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0),
        logit_bias={int(k): v for k, v in bias.items() if str(k).isdigit()},
    )


def resample_body(body: dict, strategy: str, failed_ids: list[int], attempt: int) -> dict:
    """The client's ``body`` for resampling one choice (``attempt`` 1, 2, ...) with ``strategy``'s changes."""
    messages = body.get("messages")
    prompt = ChatPrompt(tuple(messages)) if isinstance(messages, list) else TextPrompt(text="")
    original = GenerationRequest("resample", str(body.get("model")), prompt, _sampling(body))
    changed = STRATEGIES[strategy](original, failed_ids, attempt)
    sampling, before = changed.sampling, original.sampling
    out = {key: value for key, value in body.items() if key != "n"}
    out["temperature"] = sampling.temperature  # stated even when unchanged: the upstream's default may differ
    for name in ("seed", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        if getattr(sampling, name) != getattr(before, name):
            out[name] = getattr(sampling, name)
    if sampling.logit_bias != before.logit_bias:
        out["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias.items()}
    if isinstance(changed.prompt, ChatPrompt) and changed.prompt != prompt:
        out["messages"] = list(changed.prompt.messages)
    return out

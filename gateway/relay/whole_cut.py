"""A blocked whole choice cut where a blocked stream is cut: at the detector's stable point.

The gate knows the text of each generated token (the reader reads it; vLLM names it in the
log-probabilities asked for the purpose), so it knows the generated text before the cut. Each field of
the message is found in the generated text, in the order a model generates them (reasoning, content,
each tool call's arguments), and keeps what of it lies before the cut. A field that is not there
verbatim (tool-call arguments a parser re-serialised; text whose characters span tokens the
log-probabilities cannot spell) keeps nothing, and a tool call that keeps no argument is dropped:
nothing after the stable point goes out.
"""

__all__ = ["cut_choice"]


class _Cut:
    """Where each field lies in the generated text ``full``, of which the first ``kept`` characters stay."""

    def __init__(self, full: str, kept: int) -> None:
        self._full = full
        self._kept = kept
        self._cursor = 0

    def keep(self, text: str) -> str:
        """The part of ``text`` generated before the cut ("" when it is not found in the generated text)."""
        at = self._full.find(text, self._cursor) if text else -1
        if at < 0:
            return ""
        self._cursor = at + len(text)
        return text[: max(self._kept - at, 0)]


def _cut_message(message: dict, cut: _Cut) -> dict:
    out = dict(message)
    for name in ("reasoning_content", "reasoning"):
        if isinstance(message.get(name), str):
            out[name] = cut.keep(message[name])
    if isinstance(message.get("content"), str):
        out["content"] = cut.keep(message["content"])
    if isinstance(message.get("tool_calls"), list):
        calls = []
        for call in message["tool_calls"]:
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            kept = cut.keep(arguments) if isinstance(arguments, str) else ""
            if kept:
                calls.append({**call, "function": {**function, "arguments": kept}})
        out["tool_calls"] = calls
    return out


def _cut_logprobs(logprobs: object, tokens: int) -> object:
    """The log-probabilities of the first ``tokens`` tokens (chat or completions form)."""
    if not isinstance(logprobs, dict):
        return logprobs
    return {key: value[:tokens] if isinstance(value, list) else value for key, value in logprobs.items()}


def cut_choice(raw: dict, texts: list[str], tokens: int) -> dict:
    """``raw`` (a whole chat or completions choice, generated as ``texts``, one per token) cut after its first
    ``tokens`` tokens, ended ``content_filter``."""
    cut = _Cut("".join(texts), len("".join(texts[:tokens])))
    out = {**raw, "finish_reason": "content_filter", "logprobs": _cut_logprobs(raw.get("logprobs"), tokens)}
    if isinstance(raw.get("message"), dict):
        out["message"] = _cut_message(raw["message"], cut)
    if isinstance(raw.get("text"), str):
        out["text"] = cut.keep(raw["text"])
    if "stop_reason" in raw:
        out["stop_reason"] = None  # vLLM's: what stopped it; the gate did
    if isinstance(raw.get("token_ids"), list):
        out["token_ids"] = raw["token_ids"][:tokens]
    return out

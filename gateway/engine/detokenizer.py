"""Incremental detokenisation with OpenAI stop-string semantics."""

from collections.abc import Sequence

from gateway.engine.stops import StopMatcher

__all__ = ["IncrementalDetokenizer"]


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas, never splitting a multi-byte character.

    Stop strings end the text before the stop (the stop itself is never sent); text that could still
    become a stop string is held back until it cannot. Each token's text is matched once, as it arrives
    (:class:`~gateway.engine.stops.StopMatcher`), so the cost is linear in the generated text.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stops = StopMatcher(stop)
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._pending = ""
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add a token; return the text that can be released now (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(delta)

    def _release(self, delta: str) -> str:
        held_before = len(self._pending)
        self._pending += delta
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        start = self._stops.feed(delta)
        if start is not None:
            self.stopped = True
            out, self._pending = self._pending[: held_before + start], ""
            return out
        cut = len(self._pending) - self._stops.held
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """At the end of generation: release text held back for a stop string that never completed."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

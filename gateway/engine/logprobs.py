"""Log-probabilities of sampled tokens and of the most likely tokens, as OpenAI's ``logprobs`` reports them.

They are the model's own distribution: a log-softmax over the raw logits of the step, before logit bias,
penalties, temperature and top-p (vLLM's default ``raw_logprobs`` mode; OpenAI's values do not move with
``temperature`` either). So the greedy token is always the most likely one reported, and the values say
how sure the model was, not how the request's sampling reshaped it.
"""

from collections.abc import Sequence
from functools import lru_cache

import torch
from tokenizers import decoders

from gateway.generation import TokenLogprob, TokenLogprobs

__all__ = ["LOGPROB_FLOOR", "TokenTexts", "step_logprobs"]

# The floor of a reported log-probability (OpenAI's value for tokens the model all but excludes): JSON has
# no -Infinity, and a token may be sampled by a logit bias the model gave no probability.
LOGPROB_FLOOR = -9999.0


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable character standing for each byte, mapped back to it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


_BYTE_OF = _byte_level_alphabet()


class TokenTexts:
    """Each token's raw bytes and its text (the bytes decoded, a partial character shown as U+FFFD).

    Byte-level BPE vocabularies (GPT-2, SmolLM2, Llama 3, Qwen) spell every byte as one character of the
    pieces, so a token's exact bytes are its piece mapped back; other vocabularies fall back to the
    tokenizer's decoding of the token alone.
    """

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._byte_level = isinstance(getattr(backend, "decoder", None), decoders.ByteLevel)
        self.raw = lru_cache(maxsize=65536)(self._raw)

    def _raw(self, token_id: int) -> bytes:
        if self._byte_level:
            return bytes(_BYTE_OF[char] for char in self._tokenizer.convert_ids_to_tokens(token_id))
        return self._tokenizer.decode([token_id], clean_up_tokenization_spaces=False).encode()

    def entry(self, token_id: int, logprob: float) -> TokenLogprob:
        """The reported form of one token with its log-probability."""
        raw = self.raw(token_id)
        return TokenLogprob(raw.decode("utf-8", errors="replace"), max(logprob, LOGPROB_FLOOR), raw)


def step_logprobs(
    logits: torch.Tensor, tokens: Sequence[int | None], wanted: Sequence[int | None], texts: TokenTexts
) -> list[TokenLogprobs | None]:
    """Per row of one step: the sampled token's log-probability and the ``wanted[row]`` most likely tokens
    (None for rows that did not ask; a row that asks has a sampled token)."""
    rows = [row for row, k in enumerate(wanted) if k is not None]
    out: list[TokenLogprobs | None] = [None] * len(tokens)
    if not rows:
        return out
    logprobs = torch.log_softmax(logits[rows], dim=-1)
    most = max(wanted[row] for row in rows)
    top_values, top_ids = torch.topk(logprobs, most) if most else (None, None)
    sampled = logprobs.gather(1, torch.tensor([[tokens[row]] for row in rows])).squeeze(1).tolist()
    for i, row in enumerate(rows):
        k = wanted[row]
        top = ()
        if k:
            top = tuple(
                texts.entry(token, value)
                for token, value in zip(top_ids[i, :k].tolist(), top_values[i, :k].tolist(), strict=True)
            )
        out[row] = TokenLogprobs(texts.entry(tokens[row], sampled[i]), top)
    return out

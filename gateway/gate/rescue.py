"""Rescue strategies: how to resample from the last stable prefix with a change orthogonal to the failure.

A strategy takes the next attempt's request as the client sent it (continuation set to the accepted
text), the token ids of the failed trajectory and the attempt number (1, 2, ...), and returns the
request to send. ``reseed`` samples again at a raised temperature from a new seed; ``penalize`` adds
presence and repetition penalties; ``ngram_bias`` (the default) biases against the tokens that kept closing
repeated n-grams; ``combined`` does all three (its penalties apply to every token already in the answer,
punctuation included, and made most rescued answers incoherent: docs/EVALUATION.md). ``constrain`` changes
no sampling and adds an instruction instead: the "parallel" control of ``sinkwatch eval rescue``.

Before any strategy, :func:`neutralise` takes out whatever in the client's own sampling pushes toward
repetition (negative frequency or presence penalties, a repetition penalty below 1, a positive logit bias
on the loop's tokens): otherwise the resample inherits the cause of the loop and loops again.
"""

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams

__all__ = ["CONSTRAINT", "NGRAM_BIAS", "STRATEGIES", "TOP_P_CEILING", "looping_tokens", "neutralise"]

NGRAM = 4
# How far each retry moves sampling away from the failed setting. A resample draws at least at the sampled
# setting of the production-like corpus (temperature 0.7, nucleus 0.95), under which 76% of the held-out
# answers are healthy by hand label (docs/EVALUATION.md); without the nucleus, a greedy request resampled
# at temperature 0.7 draws from the whole tail of a small model's distribution and drifts into garbage.
TEMPERATURE_FLOOR = 0.7
TOP_P_CEILING = 0.95
TEMPERATURE_STEP = 0.2
MAX_TEMPERATURE = 2.0
SEED_STRIDE = 7919
PRESENCE_PENALTY = 0.6
REPETITION_PENALTY = 1.15
NGRAM_BIAS = -6.0
CONSTRAINT = "Be concise. Do not repeat yourself; every sentence must add new information."


def looping_tokens(token_ids: Sequence[int], n: int = NGRAM) -> dict[int, float]:
    """A negative bias for every token that closed an already seen n-gram at least twice: the loop's tokens."""
    seen: Counter[tuple[int, ...]] = Counter()
    completions: Counter[int] = Counter()
    for end in range(n, len(token_ids) + 1):
        gram = tuple(token_ids[end - n : end])
        if seen[gram]:
            completions[gram[-1]] += 1
        seen[gram] += 1
    return {token: NGRAM_BIAS for token, count in completions.items() if count >= 2}


def neutralise(sampling: SamplingParams, failed_ids: Sequence[int]) -> tuple[SamplingParams, tuple[str, ...]]:
    """``sampling`` without what pushes toward repetition, and the names of the parameters changed:
    negative ``frequency_penalty``/``presence_penalty`` become 0, ``repetition_penalty`` below 1 becomes 1,
    positive ``logit_bias`` entries on the failed trajectory's looping tokens are dropped."""
    changes: dict = {}
    if sampling.frequency_penalty < 0:
        changes["frequency_penalty"] = 0.0
    if sampling.presence_penalty < 0:
        changes["presence_penalty"] = 0.0
    if sampling.repetition_penalty < 1:
        changes["repetition_penalty"] = 1.0
    looping = looping_tokens(failed_ids)
    bias = {token: value for token, value in sampling.logit_bias.items() if value <= 0 or token not in looping}
    if len(bias) < len(sampling.logit_bias):
        changes["logit_bias"] = bias
    return replace(sampling, **changes), tuple(changes)


def _reseed(sampling: SamplingParams, attempt: int) -> SamplingParams:
    """Sample (greedy requests too) at a temperature raised with each attempt, within the nucleus, from a new
    seed if seeded."""
    temperature = max(sampling.temperature, TEMPERATURE_FLOOR) + TEMPERATURE_STEP * (attempt - 1)
    seed = None if sampling.seed is None else sampling.seed + SEED_STRIDE * attempt
    top_p = min(sampling.top_p, TOP_P_CEILING)
    return replace(sampling, temperature=min(temperature, MAX_TEMPERATURE), top_p=top_p, seed=seed)


def _penalize(sampling: SamplingParams) -> SamplingParams:
    return replace(
        sampling,
        presence_penalty=max(sampling.presence_penalty, PRESENCE_PENALTY),
        repetition_penalty=max(sampling.repetition_penalty, REPETITION_PENALTY),
    )


def _with_bias(sampling: SamplingParams, bias: dict[int, float]) -> SamplingParams:
    return replace(sampling, logit_bias={**sampling.logit_bias, **bias})


def _constrained(request: GenerationRequest) -> GenerationRequest:
    """The chat prompt with the constraint added to its system message (one is prepended if absent)."""
    if not isinstance(request.prompt, ChatPrompt):
        return request
    messages = request.prompt.messages
    if messages and messages[0].get("role") == "system":
        system = {**messages[0], "content": f"{messages[0]['content']}\n{CONSTRAINT}"}
        return replace(request, prompt=ChatPrompt((system, *messages[1:])))
    return replace(request, prompt=ChatPrompt(({"role": "system", "content": CONSTRAINT}, *messages)))


Strategy = Callable[[GenerationRequest, Sequence[int], int], GenerationRequest]

STRATEGIES: dict[str, Strategy] = {
    "reseed": lambda r, ids, k: replace(r, sampling=_reseed(r.sampling, k)),
    "penalize": lambda r, ids, k: replace(r, sampling=_penalize(_reseed(r.sampling, k))),
    "ngram_bias": lambda r, ids, k: replace(r, sampling=_with_bias(_reseed(r.sampling, k), looping_tokens(ids))),
    "combined": lambda r, ids, k: replace(
        r, sampling=_with_bias(_penalize(_reseed(r.sampling, k)), looping_tokens(ids))
    ),
    "constrain": lambda r, ids, k: _constrained(r),
}

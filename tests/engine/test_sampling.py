"""Per-row sampling: exact nucleus, seeded reproducibility, penalties and bias."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine.sampling import RowSampler, _nucleus
from gateway.generation import SamplingParams

VOCAB = 2000


def _sampler(**params) -> RowSampler:
    return RowSampler(SamplingParams(max_tokens=10, **params), prompt_ids=[1, 2, 3], vocab_size=VOCAB)


def sample_batch(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """One token per row, each row with its own sampler (as the engine samples a step)."""
    return [sampler.sample(row) for row, sampler in zip(logits, samplers, strict=True)]


def _reference_nucleus(probs: torch.Tensor, top_p: float) -> set[int]:
    values, ids = torch.sort(probs, descending=True)
    keep = torch.cumsum(values, 0) - values < top_p * probs.sum()
    return set(ids[keep].tolist())


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 0.999), st.floats(0.1, 8.0))
def test_nucleus_matches_full_sort(seed, top_p, scale):
    probs = torch.softmax(torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * scale, 0)
    _, ids = _nucleus(probs, top_p)
    assert set(ids.tolist()) == _reference_nucleus(probs, top_p)


def test_greedy_picks_the_argmax():
    logits = torch.randn(3, VOCAB)
    tokens = sample_batch(logits, [_sampler(temperature=0) for _ in range(3)])
    assert tokens == logits.argmax(dim=1).tolist()


def test_same_seed_same_draws_different_seed_differs():
    logits = torch.zeros(1, VOCAB)
    draws = [[sample_batch(logits, [s])[0] for _ in range(20)] for s in (_sampler(seed=5), _sampler(seed=5))]
    assert draws[0] == draws[1]
    other = _sampler(seed=6)
    assert [sample_batch(logits, [other])[0] for _ in range(20)] != draws[0]


def test_draw_frequencies_follow_the_distribution():
    probs = torch.zeros(VOCAB)
    probs[:4] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = torch.log(probs.clamp_min(1e-30)).unsqueeze(0)
    sampler = _sampler(seed=0)
    counts = torch.bincount(torch.tensor([sample_batch(logits, [sampler])[0] for _ in range(4000)]), minlength=4)
    assert torch.allclose(counts[:4] / 4000, probs[:4], atol=0.03)


def test_top_p_never_samples_outside_the_nucleus():
    probs = torch.zeros(VOCAB)
    probs[:4] = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = torch.log(probs.clamp_min(1e-30)).unsqueeze(0)
    sampler = _sampler(seed=1, top_p=0.7)
    assert {sample_batch(logits, [sampler])[0] for _ in range(300)} == {0, 1}


def test_logit_bias_forces_and_bans_tokens():
    logits = torch.zeros(1, VOCAB)
    assert sample_batch(logits, [_sampler(seed=0, logit_bias={42: 100.0})])[0] == 42
    logits[0, 7] = 10.0
    assert sample_batch(logits, [_sampler(temperature=0, logit_bias={7: -100.0})])[0] != 7


def test_presence_and_frequency_penalties_lower_repeated_tokens():
    sampler = _sampler(temperature=0, presence_penalty=1.0, frequency_penalty=0.5)
    sampler.record(9)
    sampler.record(9)
    adjusted = sampler.adjust(torch.zeros(VOCAB))
    assert adjusted[9] == -2.0
    assert adjusted[10] == 0.0


def test_repetition_penalty_covers_prompt_and_output():
    sampler = _sampler(temperature=0, repetition_penalty=2.0)
    sampler.record(50)
    logits = torch.full((VOCAB,), 4.0)
    adjusted = sampler.adjust(logits)
    assert adjusted[1] == 2.0 and adjusted[50] == 2.0 and adjusted[60] == 4.0


def test_rows_keep_their_own_parameters():
    logits = torch.zeros(2, VOCAB)
    logits[:, 3] = 5.0
    tokens = sample_batch(logits, [_sampler(temperature=0), _sampler(temperature=0, logit_bias={8: 50.0})])
    assert tokens == [3, 8]


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 1e-300, "top_p": 0.5},
        {"top_p": 1e-300},
        {"temperature": 1e-300},
        {"top_p": 0.5, "repetition_penalty": 1e-40, "logit_bias": {1000: -100.0, 1500: -100.0, 1999: 100.0}},
        {"repetition_penalty": 1e-40, "temperature": 1e-6},
        {"repetition_penalty": 10.0, "presence_penalty": -2.0, "frequency_penalty": -2.0, "top_p": 1e-300},
    ],
)
def test_any_accepted_value_samples_a_token_in_the_vocabulary(params):
    """Values the API accepts that overflow float32 (issue 19: IndexError, engine_failure) still draw a token."""
    sampler = RowSampler(SamplingParams(max_tokens=10, seed=0, **params), prompt_ids=[1000, 1500], vocab_size=VOCAB)
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(0)) * 20
    logits[1000] = 30.0
    for _ in range(5):
        assert 0 <= sampler.sample(logits) < VOCAB


def test_non_finite_logits_still_sample_the_best_finite_token():
    logits = torch.full((VOCAB,), float("nan"))
    logits[5] = 3.0
    logits[6] = float("-inf")
    assert _sampler(temperature=0).sample(logits) == 5
    assert _sampler(seed=0, top_p=0.1).sample(logits) == 5


def test_tiny_temperature_is_greedy_and_tiny_top_p_keeps_the_top_token():
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(1))
    best = int(logits.argmax())
    assert _sampler(seed=0, temperature=1e-300).sample(logits) == best
    assert {_sampler(seed=s, top_p=1e-300).sample(logits) for s in range(5)} == {best}

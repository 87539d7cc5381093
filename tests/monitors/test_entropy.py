"""Next-token entropy: the definition, and masked tokens that contribute nothing instead of NaN."""

import pytest
import torch

from monitors.entropy import next_token_entropies


def _reference(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits.double(), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def test_it_is_the_shannon_entropy_of_the_softmax():
    logits = torch.randn(3, 1000) * 5
    assert next_token_entropies(logits) == pytest.approx(_reference(logits).float(), abs=1e-4)


def test_uniform_logits_give_log_vocabulary_and_a_certain_token_gives_zero():
    assert next_token_entropies(torch.zeros(1, 64)).item() == pytest.approx(torch.log(torch.tensor(64.0)).item())
    certain = torch.full((1, 64), -1e4)
    certain[0, 5] = 0
    assert next_token_entropies(certain).item() == pytest.approx(0, abs=1e-6)


def test_masked_tokens_contribute_nothing():
    logits = torch.randn(3, 1000) * 5
    masked = logits.clone()
    masked[:, :10] = float("-inf")
    entropy = next_token_entropies(masked)
    assert torch.isfinite(entropy).all()
    assert entropy == pytest.approx(_reference(logits[:, 10:]).float(), abs=1e-4)


def test_half_precision_logits_are_computed_in_float32():
    logits = (torch.randn(2, 49152) * 8).half()
    assert next_token_entropies(logits) == pytest.approx(_reference(logits.float()).float(), abs=1e-3)


def test_the_logits_stay_as_they_were_unless_the_caller_lets_them_be_overwritten():
    logits = torch.randn(4, 2000) * 5
    original = logits.clone()
    entropy = next_token_entropies(logits)
    assert torch.equal(logits, original)
    assert torch.equal(next_token_entropies(logits, overwrite=True), entropy)
    assert not torch.equal(logits, original)  # used as scratch
    half = original.half()
    assert torch.equal(next_token_entropies(half, overwrite=True), next_token_entropies(original.half()))
    assert torch.equal(half, original.half())  # converted to float32 first: a copy, not overwritten


def test_logits_made_under_inference_mode_can_be_overwritten_outside_it():
    with torch.inference_mode():  # as vLLM's model runner makes them
        logits = torch.randn(2, 500) * 5
    expected = _reference(logits.clone()).float()
    assert next_token_entropies(logits, overwrite=True) == pytest.approx(expected, abs=1e-4)

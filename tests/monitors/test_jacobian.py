"""Jacobian stress: exact on a known map, the budgeted estimate close to it, the decoder block faithful."""

import pytest
import torch

from monitors.jacobian import decoder_block, estimate_stress, exact_jacobian, exact_stress


def _linear_block(singular_values: list[float], seed: int = 0):
    d = len(singular_values)
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    matrix = u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.T
    return (lambda x: x @ matrix.T), matrix


def test_the_exact_jacobian_of_a_linear_map_is_its_matrix():
    block, matrix = _linear_block([5.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    h = torch.randn(6, dtype=torch.float64)
    assert torch.allclose(exact_jacobian(block, h, chunk=4), matrix)
    stress, condition = exact_stress(matrix)
    assert stress.sigma_max == pytest.approx(5.0)
    assert condition == pytest.approx(50.0)


def test_the_budgeted_estimate_finds_the_largest_singular_value_and_the_stress():
    values = [8.0] + [1.0] * 63
    block, matrix = _linear_block(values, seed=1)
    exact, _ = exact_stress(matrix)
    estimate = estimate_stress(block, torch.randn(64, dtype=torch.float64), iterations=8, probes=64)
    assert estimate.sigma_max == pytest.approx(exact.sigma_max, rel=0.02)
    assert estimate.stress == pytest.approx(exact.stress, rel=0.25)


@pytest.mark.model
@pytest.mark.filterwarnings("error::FutureWarning")  # no deprecated transformers API (past_key_values)
def test_the_decoder_block_reproduces_the_models_own_states(loaded_model):
    ids = loaded_model.tokenizer.encode("The quick brown fox jumps over the lazy dog because")
    block, h = decoder_block(loaded_model.model, ids, len(ids) - 1, 10, 12)
    with torch.no_grad():
        states = loaded_model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert torch.allclose(h, states[10][0, -1], atol=1e-4)
    assert torch.allclose(block(h[None])[0], states[12][0, -1], atol=1e-3)

"""The stressors' long prefill: reading states and losses in chunks over the KV cache gives what one
full prefill gives, on the real embedded model."""

import numpy as np

from gateway.engine.provision import DEFAULT_MODEL
from lab.eval.rank_subjects import load_subject
from monitors.bands import captured_layers


def test_chunked_prefill_matches_one_prefill():
    subject = load_subject(DEFAULT_MODEL)
    ids = subject.tokenizer("The quick brown fox jumps over the lazy dog. " * 12)["input_ids"][:120]
    layers = captured_layers(subject.bands)
    whole, whole_nll = subject.states(ids, layers, chunk=len(ids))
    chunked, chunked_nll = subject.states(ids, layers, chunk=32)
    assert whole.shape == chunked.shape == (len(ids), len(layers), whole.shape[-1])
    np.testing.assert_allclose(chunked, whole, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(chunked_nll[:-1], whole_nll[:-1], rtol=1e-3, atol=1e-3)
    assert np.isnan(chunked_nll[-1]) and np.isnan(whole_nll[-1])

"""The reader model reads an upstream's streamed text chunk by chunk and sees what one prefill of the whole
text would show; with ``--reader`` the proxy's answers carry a stability report."""

import random

import numpy as np
import pytest

from gateway.backends.reader import Reader
from gateway.engine.engine import encode_prompt
from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams, TextPrompt
from lab.eval.runner import GenerationRecord, teacher_forced_states
from monitors.calibration import load_calibration
from monitors.features import FeatureExtractor
from tests.conftest import MODEL
from tests.upstreams import CHAT, client_of, proxy_gateway

pytestmark = pytest.mark.anyio
TEXT = "The quick brown fox jumps over the lazy dog.\nIt was a sunny   day, and the fox trotted home."


@pytest.fixture(scope="module")
def calibration():
    return load_calibration(MODEL)


def _chunks(text: str, seed: int = 0) -> list[str]:
    rng, pieces, start = random.Random(seed), [], 0
    while start < len(text):
        size = rng.randint(2, 9)
        pieces.append(text[start : start + size])
        start += size
    return pieces


async def test_chunked_reading_gives_the_features_of_one_teacher_forced_prefill(calibration, loaded_model):
    reader = Reader(MODEL, MODEL, calibration.bands, calibration.window, calibration.extractor_options())
    await reader.start()
    request = GenerationRequest(
        "r", MODEL, ChatPrompt(({"role": "user", "content": "Tell a story."},)), SamplingParams(64)
    )
    session = await reader.open(request)
    events = []
    for chunk in _chunks(TEXT):
        events += await session.read(chunk)
    events += await session.finish()
    session.close()
    reader.close()

    assert "".join(event.text for event in events) == TEXT
    ids = [event.token_id for event in events]
    assert ids == reader.loaded.tokenizer.encode(TEXT, add_special_tokens=False)

    extractor = FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
    record = GenerationRecord("r", encode_prompt(loaded_model, request), [*ids, 0], TEXT, "stop")
    states = teacher_forced_states(loaded_model, record, extractor.layers)
    expected = [extractor.push(states.states[t], float(states.entropy[t]), ids[t]) for t in range(len(ids))]
    for got, want in zip((event.features for event in events), expected, strict=True):
        assert got.values.keys() == want.values.keys()
        np.testing.assert_allclose(list(got.values.values()), list(want.values.values()), rtol=2e-3, atol=2e-3)


async def test_the_reader_reads_at_most_its_stream_count_and_skips_token_id_prompts(calibration):
    reader = Reader(MODEL, MODEL, calibration.bands, calibration.window, max_streams=1)
    await reader.start()
    chat = GenerationRequest("a", MODEL, ChatPrompt(({"role": "user", "content": "hi"},)), SamplingParams(8))
    first = await reader.open(chat)
    assert first is not None and await reader.open(chat) is None
    first.close()
    assert await reader.open(chat) is not None
    assert await reader.open(GenerationRequest("b", MODEL, TextPrompt(token_ids=(1, 2)), SamplingParams(8))) is None
    reader.close()


@pytest.mark.filterwarnings("error::FutureWarning")  # no deprecated transformers API (past_key_values)
def test_with_a_reader_the_proxy_reports_stability(upstream):
    upstream.config.tokens = 40
    with proxy_gateway(upstream.base_url, reader=True, policy="annotate") as server:
        client = client_of(server, timeout=60)
        whole = client.chat.completions.create(**CHAT)
        report = whole.model_extra["stability"]
        assert report["tokens_monitored"] > 30 and report["verdict"] in ("ok", "warn", "sink", "rank_exhaustion")
        assert whole.choices[0].message.content == "".join(f" w{i}" for i in range(40))
        chunks = list(client.chat.completions.create(**CHAT, stream=True))
        assert chunks[-1].model_extra["stability"]["tokens_monitored"] == report["tokens_monitored"]
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
        )

"""Gemma 3 270M end to end on the embedded engine: provisioned from its PyPI chunk wheels, served with the
official client, monitored uncalibrated on its own profile (18 layers, width 640), chat refused without a
template as vLLM refuses it and served with ``--chat-template``. Marker ``gemma`` (``make test-gemma``)."""

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from gateway.config import Settings
from gateway.engine.provision import PACKAGED_MODELS, provision
from lab.fakes.processes import free_port
from monitors.calibration import load_calibration
from tests.conftest import RunningServer, metric, start_gateway

pytestmark = pytest.mark.gemma

GEMMA = "gemma-3-270m"
PROMPT = "The capital of France is"
# A plain template (Gemma's own turn markers), for the chat test only.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
)


@pytest.fixture(scope="module")
def gemma_folder() -> Path:
    return provision(GEMMA)  # converted once (make test-gemma fetches it first)


def _serve(**settings) -> RunningServer:
    return start_gateway(Settings().replace(port=free_port(), model=GEMMA, max_batch=2, **settings))


@pytest.fixture(scope="module")
def gemma(gemma_folder) -> Iterator[RunningServer]:
    with _serve() as server:
        server.wait_ready(timeout=300)
        yield server


def _client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0, timeout=180)


def test_the_packaged_gemma_is_a_converted_base_model_folder(gemma_folder):
    config = json.loads((gemma_folder / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (18, 640)
    assert not PACKAGED_MODELS[GEMMA].chat
    assert "chat_template" not in (gemma_folder / "tokenizer_config.json").read_text()
    with pytest.raises(FileNotFoundError):
        load_calibration(GEMMA)  # no thresholds of another model for it


def test_completions_are_served_and_reported_uncalibrated_on_gemmas_own_bands(gemma):
    raw = _client(gemma).completions.with_raw_response.create(model=GEMMA, prompt=PROMPT, max_tokens=40, temperature=0)
    completion = raw.parse()
    assert "Paris" in completion.choices[0].text or "capital" in completion.choices[0].text  # <bos> is there
    assert raw.headers["x-sinkwatch-verdict"] == "uncalibrated"
    stability = completion.model_extra["stability"]
    assert (stability["verdict"], stability["tokens_monitored"]) == ("uncalibrated", 40)
    bands = {name: band["layers"] for name, band in stability["bands"].items()}
    assert bands == {"early": [3, 4], "middle": [8, 10], "late": [14, 16]}  # thirds of 18 layers
    # window statistics once the 32-token window is full; outlier dimensions removed in pr_clip
    assert {"entropy", "text.periodicity", "late.pr", "early.pr_clip"} <= set(stability["signals"])


def test_a_stream_ends_with_the_uncalibrated_report_and_block_does_not_act(gemma):
    chunks = list(
        _client(gemma).completions.create(
            model=GEMMA,
            prompt="1, 2, 3, 1, 2, 3, 1, 2, 3,",
            max_tokens=32,
            temperature=0,
            stream=True,
            extra_body={"sinkwatch": {"policy": "block"}},
        )
    )
    stability = chunks[-1].model_extra["stability"]
    assert stability["verdict"] == "uncalibrated"
    assert (stability["gate"]["action"], stability["gate"]["reason"]) == ("none", "uncalibrated")
    assert stability["signals"]["text.periodicity"]["max"] > 0.5  # the counting loop is in the raw signal
    assert sum(len(c.choices[0].text) for c in chunks if c.choices) > 0
    assert metric(gemma.base_url, "sinkwatch_model_calibrated", model=GEMMA) == 0


def test_concurrent_greedy_requests_answer_as_they_do_alone(gemma):
    """Gemma's cache (sliding-window layers beside global ones) joins the engine's running batch correctly."""
    prompts = [PROMPT, "Water boils at a temperature of", "The first rule of the garden is"]
    client = _client(gemma)

    def answer(prompt: str) -> str:
        return client.completions.create(model=GEMMA, prompt=prompt, max_tokens=24, temperature=0).choices[0].text

    alone = [answer(prompt) for prompt in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(answer, prompts))
    assert together == alone


def test_chat_on_a_base_model_without_a_template_is_refused_as_vllm_refuses_it(gemma):
    with pytest.raises(openai.BadRequestError) as refused:
        _client(gemma).chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    error = refused.value.body
    assert (error["code"], error["param"], refused.value.status_code) == ("chat_template_missing", "messages", 400)
    assert "--chat-template" in error["message"]


def test_chat_is_served_with_a_chat_template_file(gemma_folder, tmp_path):
    template = tmp_path / "gemma.jinja"
    template.write_text(TEMPLATE)
    with _serve(chat_template=str(template)) as server:
        server.wait_ready(timeout=300)
        reply = _client(server).chat.completions.create(
            model=GEMMA, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=12
        )
    assert reply.choices[0].message.content
    assert reply.model_extra["stability"]["verdict"] == "uncalibrated"
    assert reply.usage.prompt_tokens > 8  # the template's turn markers around the question

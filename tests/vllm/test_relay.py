"""Relay, then annotate, against a real vLLM with the plugin: what an application sends to vLLM is accepted by
the gateway in front of it and answered with the same fields plus ``stability``, streamed and not, and a
forced loop under ``block`` leaks nothing, in text, tool-call arguments or JSON output."""

import json

import openai
import pytest

from gateway.gate.monitor import prefill_sampling
from gateway.relay.resample import body_sampling
from lab.bench.vllm_server import VLLMServer
from monitors.bands import captured_layers
from tests.backends.fake_vllm import MODEL
from tests.conftest import RunningServer
from tests.gate.test_prefill_risk import MESSAGES as PREFILL_QUESTION
from tests.gate.test_prefill_risk import prompt_states

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "Name three colours."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_HISTORY = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call-1", "content": "Sunny, 21 C"},
    {"role": "user", "content": "And in Rome?"},
]
PERSON = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
    },
}
COLOURS = {
    "type": "function",
    "function": {
        "name": "list_colours",
        "description": "Record colours",
        "parameters": {"type": "object", "properties": {"colours": {"type": "array", "items": {"type": "string"}}}},
    },
}
WORDS = {
    "type": "json_schema",
    "json_schema": {"name": "words", "schema": {"type": "array", "items": {"type": "string"}}},
}
# Greedy decoding that rewards repeating what it already said: SmolLM2 falls into a loop within the budget.
LOOP = {"temperature": 0.0, "frequency_penalty": -2.0, "max_tokens": 200}
TOOL_LOOP = {"frequency_penalty": 0.0}


def _client(server: RunningServer | VLLMServer) -> openai.OpenAI:
    base = server.url if isinstance(server, VLLMServer) else f"{server.base_url}/v1"
    return openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=600)


def _ask(server, stream: bool, **options) -> dict:
    """The answer as one dict per choice (text, tool-call arguments, logprobs, finish reason, report) and the
    top-level report, whether streamed or not."""
    options = {"model": MODEL, "max_tokens": 48, **options}
    client = _client(server)
    if not stream:
        answer = client.chat.completions.create(**options)
        choices = {
            c.index: {
                "text": c.message.content or "",
                "arguments": "".join(t.function.arguments for t in c.message.tool_calls or []),
                "logprobs": c.logprobs.content if c.logprobs else [],
                "finish_reason": c.finish_reason,
                "stability": (c.model_extra or {}).get("stability"),
            }
            for c in answer.choices
        }
        return {"choices": choices, "stability": (answer.model_extra or {}).get("stability")}
    choices: dict[int, dict] = {}
    top = None
    for chunk in client.chat.completions.create(stream=True, **options):
        top = (chunk.model_extra or {}).get("stability") or top
        for c in chunk.choices:
            got = choices.setdefault(
                c.index, {"text": "", "arguments": "", "logprobs": [], "finish_reason": None, "stability": None}
            )
            got["text"] += c.delta.content or ""
            got["arguments"] += "".join((t.function.arguments or "") for t in c.delta.tool_calls or [] if t.function)
            got["logprobs"] += c.logprobs.content if c.logprobs and c.logprobs.content else []
            got["finish_reason"] = c.finish_reason or got["finish_reason"]
            got["stability"] = (c.model_extra or {}).get("stability") or got["stability"]
    return {"choices": choices, "stability": top}


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_and_top_logprobs(real_vllm_gateway, stream):
    answer = _ask(real_vllm_gateway, stream, messages=QUESTION, logprobs=True, top_logprobs=2, temperature=0.0)
    choice = answer["choices"][0]
    assert choice["logprobs"] and all(len(entry.top_logprobs) == 2 for entry in choice["logprobs"])
    assert answer["stability"]["tokens_monitored"] == len(choice["logprobs"])


@pytest.mark.parametrize("stream", [False, True])
def test_two_choices_get_two_reports(real_vllm_gateway, stream):
    answer = _ask(real_vllm_gateway, stream, messages=QUESTION, n=2, temperature=0.9, seed=3)
    reports = [answer["choices"][i]["stability"] for i in (0, 1)]
    assert all(report["tokens_monitored"] > 0 for report in reports)
    assert answer["stability"]["choice"] in (0, 1)


@pytest.mark.parametrize("stream", [False, True])
def test_a_json_schema_answer(real_vllm_gateway, stream):
    answer = _ask(real_vllm_gateway, stream, messages=QUESTION, response_format=PERSON, temperature=0.0, max_tokens=64)
    person = json.loads(answer["choices"][0]["text"])
    assert set(person) >= {"name", "age"}
    assert answer["stability"]["covered"]["content"] == answer["stability"]["tokens_monitored"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_required_tool_call_after_a_tool_result(real_vllm_gateway, stream):
    answer = _ask(
        real_vllm_gateway,
        stream,
        messages=TOOL_HISTORY,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0.0,
        max_tokens=64,
    )
    json.loads(answer["choices"][0]["arguments"])  # whatever SmolLM2 chose, vLLM's grammar made it JSON
    covered = answer["stability"]["covered"]
    assert "tool_calls" in covered and answer["stability"]["tokens_monitored"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_sampling_extensions(real_vllm_gateway, stream):
    answer = _ask(real_vllm_gateway, stream, messages=QUESTION, extra_body={"top_k": 5, "min_p": 0.05}, seed=1)
    assert answer["choices"][0]["text"] and answer["stability"]["tokens_monitored"] > 0


def test_the_responses_api(real_vllm_gateway):
    client = _client(real_vllm_gateway)
    whole = client.responses.create(model=MODEL, input="Name three colours.", max_output_tokens=32, temperature=0.0)
    assert whole.output_text and whole.model_extra["stability"]["tokens_monitored"] == whole.usage.output_tokens
    events = list(
        client.responses.create(
            model=MODEL, input="Name three colours.", max_output_tokens=32, temperature=0.0, stream=True
        )
    )
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.model_extra["stability"]["tokens_monitored"] == final.response.usage.output_tokens > 0


def test_the_responses_api_under_block_cuts_a_forced_loop_and_leaks_none_of_it(real_vllm_gateway, vllm_server):
    options = {
        "model": MODEL,
        "input": "Name three colours.",
        "max_output_tokens": LOOP["max_tokens"],
        "temperature": 0.0,
    }
    loop = {"frequency_penalty": LOOP["frequency_penalty"]}
    direct = _client(vllm_server).responses.create(**options, include=["message.output_text.logprobs"], extra_body=loop)
    tokens = [entry.token for entry in direct.output[-1].content[0].logprobs]
    block = {**loop, "sinkwatch": {"policy": "block"}}
    events = list(_client(real_vllm_gateway).responses.create(**options, extra_body=block, stream=True))
    final = events[-1]
    assert final.type == "response.incomplete" and final.response.incomplete_details.reason == "content_filter"
    report = final.response.model_extra["stability"]
    assert (report["verdict"], report["gate"]["action"], report["gate"]["tokens_leaked"]) == ("sink", "block", 0)
    sent = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    cut = report["gate"]["attempts"][0]["rollback_to_token"]
    assert sent == "".join(tokens[:cut]) and len(sent) < len(direct.output_text)  # exactly what came before the cut
    assert final.response.output_text == sent
    whole = _client(real_vllm_gateway).responses.create(**options, extra_body=block)
    assert (whole.status, whole.output_text) == ("incomplete", sent)


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param({"messages": QUESTION}, id="text"),
        pytest.param({"messages": QUESTION, "response_format": WORDS}, id="json-array"),
        # greedy SmolLM2 loops inside this tool call's arguments by itself ("luc_cole_luc_cole_...")
        pytest.param(
            {"messages": QUESTION, "tools": [COLOURS], "tool_choice": "required", **TOOL_LOOP}, id="tool-call"
        ),
    ],
)
def test_a_forced_loop_is_a_sink_and_block_leaks_none_of_it(real_vllm_gateway, vllm_server, shape):
    shape = {**LOOP, **shape}
    direct = _ask(vllm_server, True, **shape, logprobs=True)["choices"][0]
    annotated = _ask(real_vllm_gateway, False, **shape)
    assert annotated["stability"]["verdict"] == "sink"
    blocked = _ask(real_vllm_gateway, True, **shape, extra_body={"sinkwatch": {"policy": "block"}})
    choice, report = blocked["choices"][0], blocked["stability"]
    assert choice["finish_reason"] == "content_filter"
    assert (report["gate"]["action"], report["gate"]["tokens_leaked"]) == ("block", 0)
    sent, full = choice["text"] + choice["arguments"], direct["text"] + direct["arguments"]
    assert full.startswith(sent) and len(sent) < len(full)
    if "tools" not in shape:  # the text is the tokens' own: exactly those before the cut went out
        cut = report["gate"]["attempts"][0]["rollback_to_token"]
        assert sent == "".join(entry.token for entry in direct["logprobs"][:cut])
    # A whole answer is cut at the same stable point (vLLM's whole answer to the looping tool call is its
    # raw text as content: the parser cannot parse the unfinished call).
    whole = _ask(real_vllm_gateway, False, **shape, extra_body={"sinkwatch": {"policy": "block"}})["choices"][0]
    uncut = _ask(vllm_server, False, **shape)["choices"][0]
    kept, full = whole["text"] + whole["arguments"], uncut["text"] + uncut["arguments"]
    assert whole["finish_reason"] == "content_filter" and full.startswith(kept) and 0 < len(kept) < len(full)
    if "tools" not in shape:
        assert kept == sent and whole["logprobs"] == []


def test_a_rescued_stream_continues_from_its_stable_point(real_vllm_gateway, vllm_server):
    direct = _ask(vllm_server, True, **LOOP, messages=QUESTION, logprobs=True)["choices"][0]
    rescued = _ask(real_vllm_gateway, True, **LOOP, messages=QUESTION, extra_body={"sinkwatch": {"policy": "rescue"}})
    choice, gate = rescued["choices"][0], rescued["stability"]["gate"]
    first, second = gate["attempts"][:2]
    cut = first["rollback_to_token"]
    stable = "".join(entry.token for entry in direct["logprobs"][:cut])
    assert choice["text"].startswith(stable) and len(choice["text"]) > len(stable)  # stable part, then more
    expected = ("ngram_bias", ["frequency_penalty"], 0)
    assert (second["strategy"], second["neutralised"], gate["tokens_leaked"]) == expected
    assert gate["outcome"] in ("rescued", "rescue_failed")


def test_the_prefill_risk_comes_from_the_prompt_states_vllm_computed(real_vllm_gateway, calibration, loaded_model):
    """The plugin's first features are the prompt's last position: the risk matches the embedded model's."""
    probe = calibration.prefill_probe
    score = probe.prompt_score(prompt_states(loaded_model, captured_layers(calibration.bands)))
    body = {"max_tokens": 8, "temperature": 0, "frequency_penalty": -1.0}
    answer = _ask(real_vllm_gateway, False, messages=PREFILL_QUESTION, **body)
    expected = probe.risk(score, prefill_sampling(body_sampling(body)))
    assert answer["stability"]["prefill_risk"] == pytest.approx(expected, abs=0.02)

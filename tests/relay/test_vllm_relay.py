"""Relay, then annotate, on the ``vllm`` backend: requests go upstream as the client sent them, answers come
back as vLLM sent them with ``stability`` added (per choice for ``n > 1``), and the gate holds back every
kind of delta. Against the fake vLLM, with the official client."""

import json
import time

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from tests.backends.fake_vllm import MODEL, FakeVLLM
from tests.conftest import RunningServer, free_port, metric
from tests.relay.conftest import client_of, relay_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
LOOP_FROM = 8


def _stream(server: RunningServer, body: dict, **headers) -> list[dict]:
    url = f"{server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_fields_the_gateway_does_not_act_on_go_upstream_as_sent(fake, relay_server):
    upstream, _ = fake
    extras = {
        "tools": TOOLS,
        "tool_choice": "required",
        "logprobs": True,
        "top_logprobs": 2,
        "response_format": {"type": "json_object"},
        "top_k": 5,
        "min_p": 0.1,
        "chat_template_kwargs": {"enable_thinking": False},
        "reasoning_effort": "low",
    }
    history = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    answer = client_of(relay_server).chat.completions.create(
        model=MODEL, messages=history, max_tokens=4, extra_body={**extras, "sinkwatch": {"policy": "annotate"}}
    )
    sent = upstream.bodies[-1]
    assert {name: sent[name] for name in extras} == extras
    assert sent["messages"] == history and "sinkwatch" not in sent
    assert answer.model_extra["stability"]["tokens_monitored"] == 4


def test_whole_answers_come_back_as_sent_with_the_report_and_without_the_added_token_ids(fake, relay_server):
    answer = httpx.post(
        f"{relay_server.base_url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 6}
    ).json()
    assert "kv_transfer_params" in answer and "prompt_token_ids" not in answer  # upstream fields stay, ours go
    assert "token_ids" not in answer["choices"][0]
    assert answer["choices"][0]["message"]["content"] == "".join(f" t{i}" for i in range(6))
    assert answer["stability"]["covered"] == {"content": 6}


def test_a_client_asking_for_token_ids_keeps_them(fake, relay_server):
    answer = client_of(relay_server).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, extra_body={"return_token_ids": True}
    )
    assert answer.choices[0].model_extra["token_ids"] == [FakeVLLM.token_id(i) for i in range(3)]


def test_tokens_a_parser_holds_back_are_monitored_without_sending_their_empty_chunks(fake, relay_server):
    upstream, _ = fake
    upstream.config.held = 3
    chunks = _stream(relay_server, {"model": MODEL, "messages": MESSAGES, "max_tokens": 6})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert all(any(delta.values()) for delta in deltas)
    assert "".join(d.get("content") or "" for d in deltas) == " t3 t4 t5"
    assert chunks[-1]["stability"]["tokens_monitored"] == 6


def test_under_annotate_chunks_do_not_wait_for_features_which_are_all_counted_at_the_end(fake, relay_server):
    upstream, _ = fake
    upstream.config.features, upstream.config.delay = "after", 1.5
    url = f"{relay_server.base_url}/v1/chat/completions"
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 6, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        lines = response.iter_lines()
        first_text = next(line for line in lines if '"content": " t0"' in line or '"content":" t0"' in line)
        waited = time.monotonic() - started
        last = [line for line in lines if line.startswith("data: {")][-1]
    assert first_text and waited < 1.5  # the features of " t0" were still on their way
    assert json.loads(last.removeprefix("data: "))["stability"]["tokens_monitored"] == 6


def test_logprobs_stream_back_as_the_upstream_sent_them(fake, relay_server):
    chunks = _stream(relay_server, {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "logprobs": True})
    carrying = [c for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]
    assert len(carrying) == 4 and carrying[0]["choices"][0]["logprobs"]["content"][0]["token"] == " t0"
    assert chunks[-1]["stability"]["tokens_monitored"] == 4


@pytest.mark.parametrize("stream", [False, True])
def test_with_several_choices_each_has_its_report_and_the_top_level_names_the_worst(fake, relay_server, stream):
    upstream, _ = fake
    upstream.config.loop_from, upstream.config.loop_choices = LOOP_FROM, (1,)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "n": 3}
    if stream:
        chunks = _stream(relay_server, body)
        finishes = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
        reports = {choice["index"]: choice["stability"] for choice in finishes}
        top = chunks[-1]["stability"]
    else:
        answer = httpx.post(f"{relay_server.base_url}/v1/chat/completions", json=body, timeout=30).json()
        reports = {choice["index"]: choice["stability"] for choice in answer["choices"]}
        top = answer["stability"]
    assert sorted(reports) == [0, 1, 2]
    assert all(report["tokens_monitored"] == 40 for report in reports.values())
    assert reports[1]["verdict"] == "sink" and reports[0]["verdict"] != "sink"
    assert top["choice"] == 1 and top["verdict"] == "sink"
    assert upstream.bodies[-1]["vllm_xargs"]["sinkwatch_choices"] == 3


@pytest.mark.parametrize("kind", ["content", "tool_calls", "reasoning"])
def test_block_holds_back_every_kind_of_delta_so_nothing_of_the_loop_leaks(fake, relay_server, kind):
    upstream, _ = fake
    upstream.config.kind, upstream.config.loop_from = kind, LOOP_FROM
    chunks = _stream(
        relay_server,
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "tools": TOOLS},
        **{"x-sinkwatch-policy": "block"},
    )
    sent = json.dumps([c["choices"] for c in chunks])
    assert not any(f'" t{i}"' in sent for i in range(LOOP_FROM, 40))
    assert '" t0"' in sent  # what the detector vouched for before the cut still went out
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    report = chunks[-1]["stability"]
    assert (report["verdict"], report["gate"]["action"], report["gate"]["tokens_leaked"]) == ("sink", "block", 0)
    assert set(report["covered"]) <= {"content", "tool_calls", "reasoning"} and kind in report["covered"]


def _fields(message: dict) -> tuple[str, str, str]:
    """A message's or the sum of the deltas' (reasoning, content, tool-call arguments)."""
    arguments = "".join(call["function"].get("arguments") or "" for call in message.get("tool_calls") or [])
    return message.get("reasoning_content") or "", message.get("content") or "", arguments


@pytest.mark.parametrize("kind", ["content", "tool_calls", "reasoning"])
def test_a_blocked_whole_answer_is_cut_where_the_stream_is(fake, relay_server, kind):
    upstream, _ = fake
    upstream.config.kind, upstream.config.loop_from, upstream.config.loop_requests = kind, LOOP_FROM, 2
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "tools": TOOLS}
    chunks = _stream(relay_server, body, **{"x-sinkwatch-policy": "block"})
    deltas = [_fields(c["choices"][0]["delta"]) for c in chunks if c["choices"]]
    streamed = tuple("".join(parts) for parts in zip(*deltas, strict=True))
    whole = httpx.post(
        f"{relay_server.base_url}/v1/chat/completions", json=body, headers={"x-sinkwatch-policy": "block"}, timeout=30
    ).json()
    choice, gate = whole["choices"][0], whole["stability"]["gate"]
    assert _fields(choice["message"]) == streamed and any(streamed)  # the stable prefix, as streamed
    assert (choice["finish_reason"], choice["logprobs"]) == ("content_filter", None)
    assert upstream.bodies[-1]["logprobs"] is True  # asked to spell the tokens, not passed on
    attempt = gate["attempts"][0]
    assert (
        attempt["tokens_kept"]
        == attempt["rollback_to_token"]
        == chunks[-1]["stability"]["gate"]["attempts"][0]["rollback_to_token"]
    )
    assert gate["tokens_withheld"] == attempt["tokens_generated"] - attempt["tokens_kept"] > 0


def test_a_blocked_whole_answer_keeps_the_logprobs_of_what_it_kept(fake, relay_server):
    upstream, _ = fake
    upstream.config.loop_from = LOOP_FROM
    answer = client_of(relay_server).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=40, logprobs=True, extra_body={"sinkwatch": {"policy": "block"}}
    )
    kept = answer.model_extra["stability"]["gate"]["attempts"][0]["tokens_kept"]
    assert answer.choices[0].message.content == "".join(f" t{i}" for i in range(kept))
    assert [entry.token for entry in answer.choices[0].logprobs.content] == [f" t{i}" for i in range(kept)]


def test_rescue_resamples_a_collapsed_choice_from_its_start_and_says_so(fake, relay_server):
    upstream, _ = fake
    upstream.config.kind, upstream.config.loop_from = "tool_calls", LOOP_FROM
    before = len(upstream.bodies)
    answer = client_of(relay_server).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=40, tools=TOOLS, extra_body={"sinkwatch": {"policy": "rescue"}}
    )
    gate = answer.model_extra["stability"]["gate"]
    assert (gate["action"], gate["outcome"]) == ("rescue", "rescued")
    assert [attempt["strategy"] for attempt in gate["attempts"]] == [None, "ngram_bias"]
    assert answer.choices[0].message.tool_calls[0].function.arguments == "".join(f" t{i}" for i in range(40))
    resample = upstream.bodies[before + 1]
    assert resample["tools"] == TOOLS and "n" not in resample
    assert resample["temperature"] >= 0.7 and resample["top_p"] <= 0.95 and min(resample["logit_bias"].values()) < 0


def test_a_resample_takes_out_the_clients_inducers_of_repetition_and_says_so(fake, relay_server):
    upstream, _ = fake
    upstream.config.loop_from = LOOP_FROM
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "frequency_penalty": -2.0, "temperature": 0.0}
    answer = httpx.post(
        f"{relay_server.base_url}/v1/chat/completions", json=body, headers={"x-sinkwatch-policy": "rescue"}, timeout=30
    ).json()
    attempts = answer["stability"]["gate"]["attempts"]
    assert [attempt["neutralised"] for attempt in attempts] == [[], ["frequency_penalty"]]
    assert upstream.bodies[0]["frequency_penalty"] == -2.0 and upstream.bodies[1]["frequency_penalty"] == 0.0


def test_a_rescued_stream_of_text_is_continued_from_its_stable_point(fake, relay_server):
    upstream, _ = fake
    upstream.config.loop_from = LOOP_FROM
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "frequency_penalty": -2.0}
    chunks = _stream(relay_server, body, **{"x-sinkwatch-policy": "rescue"})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    gate = chunks[-1]["stability"]["gate"]
    first, second = gate["attempts"]
    cut = first["rollback_to_token"]
    accepted = "".join(f" t{i}" for i in range(cut))
    # what was stable streamed under the hold-back, then the continuation's own tokens (the fake's t0, t1, ...)
    assert text == accepted + "".join(f" t{i}" for i in range(40 - cut))
    assert 0 < cut <= LOOP_FROM and first["tokens_kept"] == cut and second["tokens_generated"] == 40 - cut
    assert (gate["outcome"], gate["holdback_tokens"], gate["tokens_leaked"]) == ("rescued", 3, 0)
    assert gate["tokens_discarded"] == first["tokens_generated"] - cut
    continuation = upstream.bodies[-1]
    assert continuation["messages"] == [*MESSAGES, {"role": "assistant", "content": accepted}]
    assert (continuation["continue_final_message"], continuation["add_generation_prompt"]) == (True, False)
    assert continuation["max_tokens"] == 40 - cut and continuation["frequency_penalty"] == 0.0
    assert second["neutralised"] == ["frequency_penalty"]


def test_a_streamed_tool_call_under_rescue_is_held_whole_and_resampled_from_its_start(fake, relay_server):
    upstream, _ = fake
    upstream.config.kind, upstream.config.loop_from = "tool_calls", LOOP_FROM
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "tools": TOOLS}
    chunks = _stream(relay_server, body, **{"x-sinkwatch-policy": "rescue"})
    arguments = "".join(
        call["function"].get("arguments") or ""
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls") or []
    )
    assert arguments == "".join(f" t{i}" for i in range(40))  # the resample's alone: nothing sent twice
    assert chunks[-1]["stability"]["gate"]["holdback_tokens"] is None
    assert "continue_final_message" not in upstream.bodies[-1]


def test_upstream_client_errors_pass_through_unchanged(fake, relay_server):
    upstream, _ = fake
    upstream.config.status = 400
    response = httpx.post(
        f"{relay_server.base_url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "n": 1000}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "fake failure 400" and response.json()["error"]["param"] == "n"


def test_the_gateway_still_refuses_what_it_acts_on(relay_server):
    bad = [{"model": MODEL, "messages": MESSAGES, "sinkwatch": {"policy": "x"}}, {"messages": MESSAGES}]
    for body in bad:
        response = httpx.post(f"{relay_server.base_url}/v1/chat/completions", json=body)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    unknown = {"model": "nope", "messages": MESSAGES}
    assert httpx.post(f"{relay_server.base_url}/v1/chat/completions", json=unknown).status_code == 404


def test_model_cards_are_the_upstreams_own(relay_server):
    cards = client_of(relay_server).models.list().data
    assert [(card.id, card.owned_by, card.model_extra["max_model_len"]) for card in cards] == [(MODEL, "vllm", 2048)]


def test_embeddings_are_relayed_marked_unmonitored_and_counted(fake, relay_server):
    before = metric(relay_server.base_url, "sinkwatch_unmonitored_requests_total", reason="endpoint")
    response = httpx.post(f"{relay_server.base_url}/v1/embeddings", json={"model": MODEL, "input": "hi"})
    assert response.headers["x-sinkwatch-verdict"] == "unmonitored"
    body = response.json()
    assert body["data"][0]["embedding"] == [0.25, -0.5, 1.0]
    assert (body["stability"]["verdict"], body["stability"]["reason"]) == ("unmonitored", "endpoint")
    assert metric(relay_server.base_url, "sinkwatch_unmonitored_requests_total", reason="endpoint") == before + 1


@pytest.mark.parametrize("stream", [False, True])
def test_responses_are_relayed_with_the_report_on_the_response(fake, relay_server, stream):
    upstream, _ = fake
    body = {"model": MODEL, "input": "hi", "stream": stream, "top_k": 3}
    with httpx.stream("POST", f"{relay_server.base_url}/v1/responses", json=body, timeout=30) as response:
        raw = response.read().decode()
    assert upstream.bodies[-1]["top_k"] == 3 and "sinkwatch_request_id" in upstream.bodies[-1]["vllm_xargs"]
    if stream:
        assert raw.count("event: ") == 40 + 5 and "[DONE]" not in raw  # every event relayed: a delta per token
        final = json.loads(raw.strip().split("\n")[-1].removeprefix("data: "))
        assert final["type"] == "response.completed"
        report = final["response"]["stability"]
    else:
        report = json.loads(raw)["stability"]
    assert report["verdict"] != "unmonitored" and report["policy"] == "annotate"


def test_a_gateway_without_a_calibration_marks_its_answers_unmonitored(fake):
    _, upstream = fake
    settings = Settings().replace(backend="vllm", upstreams=f"{upstream.base_url}/v1", capture=False, port=free_port())
    with RunningServer(create_app(settings), settings.port) as server:
        server.wait_ready(timeout=30)
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert response.headers["x-sinkwatch-verdict"] == "unmonitored"
    assert response.json()["stability"]["reason"] == "uncalibrated"


def test_the_legacy_completions_endpoint_relays_too(fake):
    _, upstream = fake
    with relay_gateway(upstream) as server:
        server.wait_ready(timeout=30)
        answer = client_of(server).completions.create(
            model=MODEL, prompt="Once", max_tokens=5, extra_body={"best_of": 1}
        )
    assert answer.choices[0].text == "".join(f" t{i}" for i in range(5))
    assert answer.model_extra["stability"]["tokens_monitored"] == 5


def test_observe_sends_no_report_but_counts_the_verdict(fake, relay_server):
    before = metric(relay_server.base_url, "sinkwatch_verdicts_total")
    response = httpx.post(
        f"{relay_server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "sinkwatch": {"policy": "observe"}},
    )
    assert "stability" not in response.json() and "x-sinkwatch-verdict" not in response.headers
    assert metric(relay_server.base_url, "sinkwatch_verdicts_total") == before + 1


def test_a_monitored_response_counts_its_verdict(fake, relay_server):
    before = metric(relay_server.base_url, "sinkwatch_verdicts_total")
    httpx.post(f"{relay_server.base_url}/v1/responses", json={"model": MODEL, "input": "hi"}, timeout=30)
    assert metric(relay_server.base_url, "sinkwatch_verdicts_total") == before + 1


def test_rescue_resamples_only_the_choice_that_collapsed(fake, relay_server):
    upstream, _ = fake
    upstream.config.loop_from, upstream.config.loop_choices = LOOP_FROM, (1,)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "n": 2}
    chunks = _stream(relay_server, body, **{"x-sinkwatch-policy": "rescue"})
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    reports = {
        c["choices"][0]["index"]: c["choices"][0]["stability"]
        for c in chunks
        if c["choices"] and "stability" in c["choices"][0]
    }
    cut = reports[1]["gate"]["attempts"][0]["rollback_to_token"]  # its stable part, then the continuation
    assert texts[1] == "".join(f" t{i}" for i in range(cut)) + "".join(f" t{i}" for i in range(40 - cut))
    assert texts[0] == "".join(f" t{i}" for i in range(40))
    assert reports[1]["gate"]["outcome"] == "rescued" and reports[0]["gate"]["outcome"] is None
    top = chunks[-1]["stability"]  # both choices end ok: the summary is the one that was rescued
    assert (top["choice"], top["verdict"], top["gate"]["outcome"]) == (1, "ok", "rescued")
    assert "n" not in upstream.bodies[-1]

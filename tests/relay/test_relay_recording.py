"""Shadow recording on the relay path (``vllm`` backend, against the fake vLLM with the plugin's behaviour):
a generation under ``observe`` — server-wide or chosen by the request — is recorded once per choice with its
per-token signals, length, finish reason and sampling, without its text unless ``--record-text``; other
policies are not recorded; a full recording directory never fails a request."""

import json
from pathlib import Path

import httpx

from tests.backends.fake_vllm import MODEL
from tests.conftest import RunningServer, metric, wait_for
from tests.relay.conftest import client_of, relay_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


def _records(directory: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(directory.glob("traffic-*.jsonl")) for line in p.read_text().splitlines()]


def _recorded(server: RunningServer) -> float:
    return metric(server.base_url, "sinkwatch_recorded_generations_total", model=MODEL)


def test_observe_records_each_choice_with_its_signals_and_no_text(fake, tmp_path):
    _, upstream = fake
    with relay_gateway(upstream, policy="observe", record_dir=str(tmp_path)) as server:
        server.wait_ready(timeout=30)
        before = _recorded(server)  # the counter is the test process's: earlier tests add to it
        client = client_of(server)
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, n=2, temperature=0.5)
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=40, stream=True, frequency_penalty=0.3
        )
        assert [chunk for chunk in stream]
        wait_for(lambda: _recorded(server) == before + 3, timeout=10)
    records = _records(tmp_path)
    assert len(records) == 3
    whole = [r for r in records if r["sampling"].get("temperature") == 0.5]
    assert len(whole) == 2 and all(r["sampling"]["max_tokens"] == 40 for r in records)
    streamed = next(r for r in records if r not in whole)
    assert streamed["sampling"] == {"frequency_penalty": 0.3, "max_tokens": 40}
    for record in records:
        assert record["backend"] == "vllm" and record["endpoint"] == "chat" and record["model"] == MODEL
        assert record["tokens"] == 40 and record["finish_reason"] == "length"
        assert "token_ids" not in record and "text" not in json.dumps(record).replace("text.periodicity", "")
        assert {"entropy", "text.periodicity", "late.pr", "late.recurrence"} <= set(record["signals"])
        assert all(len(column) == 40 for column in record["signals"].values())
        assert record["bands"] and record["window"] and record["calibration"]


def test_a_request_choosing_observe_is_recorded_and_one_choosing_annotate_is_not(fake, tmp_path):
    _, upstream = fake
    with relay_gateway(upstream, record_dir=str(tmp_path), record_text=True) as server:
        server.wait_ready(timeout=30)
        before = _recorded(server)
        url = f"{server.base_url}/v1/chat/completions"
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 12}
        assert httpx.post(url, json=body).status_code == 200  # annotate, the default: not recorded
        observed = {**body, "sinkwatch": {"policy": "observe"}}
        assert httpx.post(url, json=observed).status_code == 200
        assert httpx.post(url, json=body, headers={"x-sinkwatch-policy": "observe"}).status_code == 200
        wait_for(lambda: _recorded(server) == before + 2, timeout=10)
    records = _records(tmp_path)
    assert len(records) == 2
    assert all(len(r["token_ids"]) == 12 for r in records)  # --record-text keeps the text, as token ids


def test_an_unwritable_recording_never_fails_a_request(fake, tmp_path):
    _, upstream = fake
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with relay_gateway(upstream, policy="observe", record_dir=str(blocked)) as server:
        server.wait_ready(timeout=30)
        before = metric(server.base_url, "sinkwatch_recording_failures_total", reason="write_error")
        answer = client_of(server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        assert answer.choices[0].finish_reason == "length"
        wait_for(
            lambda: metric(server.base_url, "sinkwatch_recording_failures_total", reason="write_error") == before + 1,
            timeout=10,
        )

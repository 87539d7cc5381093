"""Calibrating the real model from its own traffic, end to end: ``sinkwatch serve`` under ``observe`` with
recording on, varied requests from the official client, ``sinkwatch calibrate --from-traffic``, a gateway
judging with the result, and SIGHUP putting a changed calibration in force (a broken one is refused)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from monitors.calibration import load_calibration
from tests.conftest import MODEL, samples, wait_for
from tests.served_gateway import ServedGateway

CALM = [
    "Name three colors.",
    "What is the capital of France?",
    "Write one sentence about cats.",
    "List two prime numbers.",
    "Say hello in Spanish.",
    "What is 2 + 2?",
]
# Greedy decoding with a repetition penalty below 1 loops (tests/gate/test_gate_e2e.py relies on it too).
LOOP = {"messages": [{"role": "user", "content": "Tell me about the ocean."}], "max_tokens": 64, "temperature": 0}
LOOP_EXTRA = {"repetition_penalty": 0.8}
COLLAPSE = {"sink", "rank_exhaustion"}


class Gateway(ServedGateway):
    """The embedded model's gateway, with the requests these tests send."""

    def chat(self, content: str, **options) -> openai.types.chat.ChatCompletion:
        """A chat completion of ``content``: greedy, 48 tokens, unless ``options`` say otherwise."""
        options = {"max_tokens": 48, "temperature": 0, **options}
        return self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], **options
        )

    def loop(self, **options) -> openai.types.chat.ChatCompletion:
        return self.client.chat.completions.create(model=MODEL, **LOOP, extra_body=LOOP_EXTRA, **options)

    def calibration_sha256(self) -> str:
        [(labels, _)] = samples(self.base_url, "sinkwatch_calibration_info")
        return labels["sha256"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Iterator[Path]:
    """A recording of varied traffic under observe: calm answers sampled and greedy, streamed and not, and a loop."""
    directory = tmp_path_factory.mktemp("recording")
    gateway = Gateway(directory.parent / "observe.log", "--policy", "observe", "--record-dir", str(directory))
    try:
        for number, prompt in enumerate(CALM):
            gateway.chat(prompt)
            gateway.chat(prompt, temperature=0.8, seed=number, max_tokens=64)
        streamed = gateway.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": CALM[0]}], max_tokens=32, stream=True
        )
        assert [chunk for chunk in streamed]
        annotated = gateway.loop(extra_headers={"x-sinkwatch-policy": "annotate"})  # not recorded
        assert annotated.model_extra["stability"]["verdict"] in COLLAPSE
        assert gateway.loop().model_extra.get("stability") is None  # observe: no report, but recorded
        wait_for(lambda: gateway.recorded() == 2 * len(CALM) + 2, timeout=60)
    finally:
        gateway.stop()
    yield directory


def _calibrate(recording: Path, output: Path) -> str:
    command = [sys.executable, "-m", "gateway.cli", "calibrate", "--from-traffic", str(recording)]
    done = subprocess.run([*command, "-o", str(output), "--held-out", "0.2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_recording_holds_every_observed_generation_without_text(recording):
    records = [json.loads(line) for p in recording.glob("traffic-*.jsonl") for line in p.read_text().splitlines()]
    assert len(records) == 2 * len(CALM) + 2
    assert all("token_ids" not in r and r["backend"] == "embedded" and r["model"] == MODEL for r in records)
    loops = [r for r in records if r["sampling"]["repetition_penalty"] == 0.8]
    assert len(loops) == 1 and loops[0]["extremes"]["text.periodicity"]["max"] == 1.0
    assert {r["finish_reason"] for r in records} <= {"stop", "length"}


def test_a_calibration_from_traffic_judges_the_model_and_reloads_on_sighup(recording, tmp_path):
    output = tmp_path / "traffic.json"
    printed = _calibrate(recording, output)
    assert "visible loops dropped" in printed and "held out" in printed
    fitted = json.loads(output.read_text())
    assert fitted["notes"]["source"].startswith("recorded traffic")
    assert fitted["notes"]["fit_visible_loops_dropped"] == 1
    assert fitted["rank_floors"] and any(s["family"] == "rank" for s in fitted["signals"])

    gateway = Gateway(tmp_path / "serve.log", "--calibration", str(output))
    try:
        assert gateway.calibration_sha256() == hashlib.sha256(output.read_bytes()).hexdigest()
        looped = gateway.loop().model_extra["stability"]
        assert looped["verdict"] in COLLAPSE and looped["calibration"] == f"{MODEL}@{fitted['created']}"
        # A recorded healthy answer, asked again the same way, stays below thresholds set at the traffic's extremes.
        assert gateway.chat(CALM[1]).model_extra["stability"]["verdict"] in ("ok", "warn")

        # Thresholds no signal can reach: after SIGHUP the same loop is no longer judged a sink.
        fitted["signals"] = [
            {**s, "threshold": 1e9 if s["direction"] == "high" or s["method"] == "cusum" else -1e9}
            for s in fitted["signals"]
            if s["family"] == "sink"
        ]
        fitted["rank_floors"] = {}
        output.write_text(json.dumps(fitted))
        digest = hashlib.sha256(output.read_bytes()).hexdigest()
        os.kill(gateway.process.pid, signal.SIGHUP)
        wait_for(lambda: gateway.calibration_sha256() == digest, timeout=30, poll=0.2)
        assert gateway.loop().model_extra["stability"]["verdict"] not in COLLAPSE

        output.write_text("{not a calibration")
        os.kill(gateway.process.pid, signal.SIGHUP)
        wait_for(lambda: "cannot be loaded" in gateway.log.read_text(), timeout=30, poll=0.2)
        assert gateway.calibration_sha256() == digest
        assert gateway.chat(CALM[0]).model_extra["stability"]["verdict"] in ("ok", "warn")
    finally:
        gateway.stop()


def test_a_gateway_awaiting_its_calibration_serves_uncalibrated_and_refuses_a_file_on_another_profile(tmp_path):
    awaited = tmp_path / "awaited.json"
    gateway = Gateway(tmp_path / "await.log", "--calibration", str(awaited), "--await-calibration")
    try:
        assert gateway.chat(CALM[0]).model_extra["stability"]["verdict"] == "uncalibrated"
        # The shipped file has the shipped reference, not the profile derived at start: it takes a restart.
        awaited.write_text(load_calibration(MODEL).to_json())
        os.kill(gateway.process.pid, signal.SIGHUP)
        wait_for(lambda: "changes the features" in gateway.log.read_text(), timeout=30, poll=0.2)
        assert gateway.chat(CALM[0]).model_extra["stability"]["verdict"] == "uncalibrated"
    finally:
        gateway.stop()

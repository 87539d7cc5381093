"""Calibrating Gemma 3 270M, which ships no calibration, from its own traffic, end to end: ``sinkwatch serve``
uncalibrated under ``observe`` with recording on and ``--await-calibration``, a handful of completions from the
official client (ordinary answers and forced loops), ``sinkwatch calibrate --from-traffic`` on the default
signal set, and SIGHUP putting the result in force in the same gateway: a forced loop is then a ``sink`` and
``block`` stops it. Marker ``gemma`` (``make test-gemma``)."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import samples, wait_for
from tests.served_gateway import ServedGateway

pytestmark = pytest.mark.gemma

GEMMA = "gemma-3-270m"
CALM = ["Q: What is the capital of France?\nA:", "Q: Name three colors.\nA:", "Q: Why is the sky blue?\nA:"]
# Greedy with a strongly negative frequency penalty: the model repeats what it already said.
LOOP = {"prompt": "Q: Explain what a black hole is.\nA:", "max_tokens": 64, "temperature": 0, "frequency_penalty": -2}


class GemmaGateway(ServedGateway):
    """``sinkwatch serve --model gemma-3-270m`` in a process of its own."""

    def __init__(self, log: Path, *flags: str) -> None:
        super().__init__(log, "--model", GEMMA, *flags)

    def complete(self, policy: str, **body) -> openai.types.Completion:
        return self.client.completions.create(model=GEMMA, extra_headers={"x-sinkwatch-policy": policy}, **body)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[GemmaGateway, Path, Path]]:
    directory = tmp_path_factory.mktemp("gemma")
    recording, calibration = directory / "recording", directory / "gemma.json"
    flags = ["--policy", "observe", "--record-dir", str(recording), "--max-batch", "2"]
    served = GemmaGateway(directory / "serve.log", *flags, "--calibration", str(calibration), "--await-calibration")
    try:
        yield served, recording, calibration
    finally:
        served.stop()


def test_gemma_recorded_uncalibrated_is_calibrated_from_its_traffic_and_judges_a_loop_after_sighup(gateway):
    served, recording, calibration = gateway
    for number, prompt in enumerate(CALM):
        served.complete("observe", prompt=prompt, max_tokens=48, temperature=0)
        served.complete("observe", prompt=prompt, max_tokens=48, temperature=0.8, seed=number)
    before = served.complete("annotate", **LOOP)
    assert before.model_extra["stability"]["verdict"] == "uncalibrated"  # nothing judges it yet
    served.complete("observe", **LOOP)
    wait_for(lambda: served.recorded() == 2 * len(CALM) + 1, timeout=60)

    command = [sys.executable, "-m", "gateway.cli", "calibrate", "--from-traffic", str(recording)]
    done = subprocess.run([*command, "-o", str(calibration), "--held-out", "0.2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "recorded uncalibrated: default signals" in done.stdout
    fitted = json.loads(calibration.read_text())
    assert fitted["model"] == GEMMA and fitted["notes"]["recorded_under"] == f"{GEMMA}@uncalibrated"
    assert {s["name"] for s in fitted["signals"]} == {f"{band}.recurrence" for band in ("early", "middle", "late")} | {
        "text.periodicity"
    }
    assert fitted["bands"] == {"early": [3, 4], "middle": [8, 10], "late": [14, 16]}  # Gemma's own profile

    assert [value for _, value in samples(served.base_url, "sinkwatch_model_calibrated")] == [0]
    os.kill(served.process.pid, signal.SIGHUP)
    wait_for(lambda: "in force" in served.log.read_text(), timeout=30, poll=0.2)
    assert "changes the features" not in served.log.read_text()
    assert [value for _, value in samples(served.base_url, "sinkwatch_model_calibrated")] == [1]
    looped = served.complete("annotate", **LOOP)
    stability = looped.model_extra["stability"]
    assert stability["verdict"] == "sink" and stability["calibration"] == f"{GEMMA}@{fitted['created']}"
    blocked = served.complete("block", **LOOP)
    assert blocked.choices[0].finish_reason == "content_filter"
    assert len(blocked.choices[0].text) < len(looped.choices[0].text)

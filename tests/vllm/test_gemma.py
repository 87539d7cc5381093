"""Gemma 3 270M under vLLM with the plugin: vLLM's ``Gemma3ForCausalLM`` returns no auxiliary hidden states, so
the plugin serves it as its subclass that does (``monitors/vllm_plugin/aux_models.py``), with vLLM's default
compilation.

- The captured states are the embedded engine's: vLLM decodes greedily in this test's subprocess
  (``vllm_states.py``) and the states the tap reads at each sampling step are compared, per captured layer,
  with the outputs of the same decoder layers hooked in the embedded engine (``ResidualCapture``) on the
  same tokens.
- The whole path on one vLLM server: the gateway (``--backend vllm``) records under ``observe`` while the model is
  uncalibrated, ``sinkwatch calibrate --from-traffic`` fits on that recording, the plugin takes the file
  (``SINKWATCH_CALIBRATION`` awaited, no restart of vLLM), the same gateway takes it on SIGHUP and judges a
  forced loop ``sink`` and cuts it under ``block``; then rank floors come from a second recording under
  recurrence levels fitted on the first, with neither vLLM nor the gateway restarted.

Markers ``vllm`` and ``gemma`` (``make test-vllm-gemma``); minutes: each part starts vLLM once.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import torch

from gateway.engine.loader import load_model
from gateway.engine.provision import provision
from lab.bench.vllm_server import VLLMServer, vllm_python
from monitors.capture import ResidualCapture
from tests.conftest import metric, samples, wait_for
from tests.served_gateway import ServedGateway

pytestmark = [pytest.mark.vllm, pytest.mark.gemma]

GEMMA = "gemma-3-270m"
MIN_COSINE = 0.999  # per captured layer and decode step, vLLM's state against the embedded engine's
MAX_NORM_RATIO_ERROR = 0.01
CALM = ["Q: What is the capital of France?\nA:", "Q: Name three colors.\nA:", "Q: Why is the sky blue?\nA:"]
# Greedy with a strongly negative frequency penalty: the model repeats what it already said.
LOOP = {"prompt": "Q: Explain what a black hole is.\nA:", "max_tokens": 64, "temperature": 0, "frequency_penalty": -2}


def test_vllm_captures_the_embedded_engines_states_for_the_same_greedy_tokens(tmp_path):
    out = tmp_path / "states.npz"
    command = [vllm_python(), str(Path(__file__).with_name("vllm_states.py")), str(provision(GEMMA)), str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run([*command, "The capital of France is", "24"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    vllm = np.load(out)
    assert str(vllm["model_class"]) == "monitors.vllm_plugin.aux_models:Gemma3ForCausalLM"
    assert str(vllm["compilation_mode"]) in ("DYNAMO_TRACE_ONCE", "VLLM_COMPILE")  # compiled, as vLLM defaults to

    loaded = load_model(provision(GEMMA), GEMMA)
    prompt, tokens, layers = list(vllm["prompt_ids"]), list(vllm["token_ids"]), list(vllm["layers"])
    capture = ResidualCapture(loaded.decoder_layers, layers, all_positions=True)
    with torch.no_grad(), capture.attached():
        logits = loaded.model(torch.tensor([prompt + tokens[:-1]])).logits[0]
        embedded = capture.take()[0, len(prompt) - 1 :].numpy()  # [steps, layers, d]
    assert logits[len(prompt) - 1 :].argmax(-1).tolist() == tokens  # the same greedy tokens

    states = vllm["states"]
    assert states.shape == embedded.shape
    cosine = (states * embedded).sum(-1) / (np.linalg.norm(states, axis=-1) * np.linalg.norm(embedded, axis=-1))
    norm_ratio = np.linalg.norm(states, axis=-1) / np.linalg.norm(embedded, axis=-1)
    print(f"layers {[int(layer) for layer in layers]}: min cosine per layer {cosine.min(0).round(8).tolist()}")
    assert cosine.min() >= MIN_COSINE, cosine.min(0)
    assert np.abs(norm_ratio - 1).max() <= MAX_NORM_RATIO_ERROR


@pytest.fixture(scope="module")
def gemma_on_vllm(tmp_path_factory) -> Iterator[tuple[VLLMServer, Path]]:
    """vLLM serving Gemma with the plugin awaiting its calibration file (in the folder given)."""
    directory = tmp_path_factory.mktemp("gemma-vllm")
    server = VLLMServer(
        model_dir=provision(GEMMA),
        served_name=GEMMA,
        log_path=Path("out/test-vllm/gemma-vllm.log"),
        dtype="float32",
        max_model_len=512,
        kv_cache_gib=1,
        env={"SINKWATCH_CALIBRATION": str(directory / "gemma.json"), "SINKWATCH_AWAIT_CALIBRATION": "1"},
    )
    with server:
        yield server, directory


def _gateway(server: VLLMServer, directory: Path, log: str) -> ServedGateway:
    """``sinkwatch serve --backend vllm`` recording under ``observe``; the served name makes it expect the
    upstream's model, uncalibrated, until the calibration file exists."""
    flags = ["--backend", "vllm", "--upstreams", server.url, "--served-model-name", GEMMA, "--policy", "observe"]
    calibration = ["--calibration", str(directory / "gemma.json"), "--await-calibration"]
    return ServedGateway(directory / log, *flags, "--record-dir", str(directory / "recording"), *calibration)


def _complete(gateway: ServedGateway, policy: str, **body) -> openai.types.Completion:
    return gateway.client.completions.create(model=GEMMA, extra_headers={"x-sinkwatch-policy": policy}, **body)


def test_gemma_on_vllm_is_recorded_uncalibrated_calibrated_from_its_traffic_judged_and_given_rank_floors(gemma_on_vllm):
    server, directory = gemma_on_vllm
    calibration, recording = directory / "gemma.json", directory / "recording"
    log = server.log_path.read_text(errors="replace")
    assert "sinkwatch: monitoring decoder layers (3, 4, 8, 10, 14, 16)" in log and "not written yet" in log

    gateway = _gateway(server, directory, "gateway.log")
    try:
        for number, prompt in enumerate(CALM):
            _complete(gateway, "observe", prompt=prompt, max_tokens=48, temperature=0)
            _complete(gateway, "observe", prompt=prompt, max_tokens=48, temperature=0.8, seed=number)
        before = _complete(gateway, "annotate", **LOOP).model_extra["stability"]
        assert before["verdict"] == "uncalibrated" and before["tokens_monitored"] == 64  # raw signals only
        _complete(gateway, "observe", **LOOP)
        wait_for(lambda: gateway.recorded() == 2 * len(CALM) + 1, timeout=60)
        assert metric(gateway.base_url, "sinkwatch_vllm_stats_total", outcome="missing") == 0

        command = [sys.executable, "-m", "gateway.cli", "calibrate", "--from-traffic", str(recording)]
        done = subprocess.run([*command, "-o", str(calibration), "--held-out", "0.2"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        fitted = json.loads(calibration.read_text())
        assert fitted["notes"]["recorded_under"] == f"{GEMMA}@uncalibrated"
        assert fitted["bands"] == {"early": [3, 4], "middle": [8, 10], "late": [14, 16]}  # the plugin's
        wait_for(lambda: "in force for new requests" in server.log_path.read_text(errors="replace"), timeout=30)

        # Neither vLLM nor the gateway restarts: the plugin took the file itself, the gateway takes it on SIGHUP.
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: [value for _, value in samples(gateway.base_url, "sinkwatch_model_calibrated")] == [1])
        looped = _complete(gateway, "annotate", **LOOP)
        stability = looped.model_extra["stability"]
        assert stability["verdict"] == "sink" and stability["calibration"] == f"{GEMMA}@{fitted['created']}"
        blocked = _complete(gateway, "block", **LOOP)
        assert blocked.choices[0].finish_reason == "content_filter"
        assert len(blocked.choices[0].text) < len(looped.choices[0].text)
        assert metric(gateway.base_url, "sinkwatch_vllm_stats_total", outcome="missing") == 0

        _rank_floors_from_a_second_recording(server, gateway, command, calibration)
    finally:
        gateway.stop()


def _taken(server: VLLMServer, gateway: ServedGateway, calibration: Path, times: int) -> None:
    """Wait until the plugin has taken the calibration file ``times`` times, then SIGHUP the gateway and wait
    until it exports the file's sha256 as the calibration in force."""
    plugin_log = lambda: server.log_path.read_text(errors="replace")  # noqa: E731
    wait_for(lambda: plugin_log().count("in force for new requests") >= times, timeout=30)
    digest = hashlib.sha256(calibration.read_bytes()).hexdigest()
    gateway.process.send_signal(signal.SIGHUP)
    info = lambda: samples(gateway.base_url, "sinkwatch_calibration_info")  # noqa: E731
    wait_for(lambda: any(labels.get("sha256") == digest for labels, _ in info()), timeout=30)


def _rank_floors_from_a_second_recording(
    server: VLLMServer, gateway: ServedGateway, command: list[str], calibration: Path
) -> None:
    """docs/OPERATIONS.md step 4 behind vLLM, where nothing restarts: recurrence levels fitted on the first
    recording, taken by the plugin from the file and by the gateway on SIGHUP; a second recording into the
    same folder then carries the novel PR, and its fit (the levels as ``--base``) gives floors that the
    plugin and the gateway take the same way and every report then measures against."""
    levels = calibration.with_name("gemma-levels.json")
    first = subprocess.run([*command, "--rank-levels", "-o", str(levels)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "rank floors: none yet" in first.stdout
    levels_fitted = json.loads(levels.read_text())
    assert set(map(int, levels_fitted["recurrence_levels"])) == {3, 4, 8, 10, 14, 16}
    calibration.write_text(levels.read_text())
    # New levels change the features; the plugin computes them, so neither vLLM nor the gateway restarts.
    _taken(server, gateway, calibration, times=2)

    before = gateway.recorded()
    for seed in range(4):
        for prompt in CALM:
            _complete(gateway, "observe", prompt=prompt, max_tokens=48, temperature=0.8, seed=seed)
    wait_for(lambda: gateway.recorded() == before + 4 * len(CALM), timeout=60)
    second = subprocess.run(
        [*command, "--base", str(levels), "-o", str(calibration), "--held-out", "0.2"], capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr
    assert f"{4 * len(CALM)} recorded generations" in second.stdout  # the second recording's only
    floors = json.loads(calibration.read_text())["rank_floors"]
    assert floors and set(floors) <= {"early", "middle", "late"}
    _taken(server, gateway, calibration, times=3)

    answer = _complete(gateway, "annotate", prompt=CALM[2], max_tokens=96, temperature=0.8, seed=7)
    report = answer.model_extra["stability"]
    # The novel PR minus each floor, from vLLM's states (a band whose windows all recur has none).
    assert [band for band in floors if report["bands"][band]["rank_margin_min"] is not None]
    assert metric(gateway.base_url, "sinkwatch_vllm_stats_total", outcome="missing") == 0

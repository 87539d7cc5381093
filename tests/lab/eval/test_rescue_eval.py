"""How ``sinkwatch eval rescue`` scores a rescue: success needs a rescued answer that passes both checks."""

import argparse
import asyncio
import json
from pathlib import Path

from gateway.gate.policy import GateConfig, Policy
from lab.eval.rescue_eval import rescore, score_run, summarize
from lab.gate_harness import run_gated
from tests.gate.scripted import CALIBRATION, REQUEST, ScriptedBackend, loop_after


def _rescued(rescues_loop: bool) -> dict:
    ids, entropy = loop_after(10, rescues_loop=rescues_loop)
    backend = ScriptedBackend([40, 30], ids=ids, entropy=entropy)
    run = asyncio.run(run_gated(backend, CALIBRATION, REQUEST, Policy.RESCUE, GateConfig(rescue_attempts=1), False))
    return score_run(run)


def test_a_rescue_that_holds_is_a_success_and_counts_the_tokens_it_threw_away():
    score = _rescued(rescues_loop=False)
    assert (score["success"], score["rescued"], score["text_sink"], score["detector_fired"]) == (
        True,
        True,
        False,
        False,
    )
    assert score["attempts"] == 1 and score["extra_tokens"] > 0
    assert score["completion_tokens"] == 10 + 30


def test_a_rescue_that_loops_again_is_a_failure():
    score = _rescued(rescues_loop=True)
    assert (score["success"], score["rescued"], score["detector_fired"]) == (False, False, True)


def test_the_summary_averages_over_cases():
    summary = summarize([_rescued(False), _rescued(True)])
    assert (summary["cases"], summary["success_rate"]) == (2, 0.5)


def _results(path: Path, cases: list[tuple[str, str, bool]]) -> None:
    """A results file of ``sinkwatch eval rescue`` on code prompts: (case, inducer, rescued) per case."""
    scores = [
        {**_rescued(rescues_loop=not rescued), "case": case, "inducer": inducer, "kind": "code"}
        for case, inducer, rescued in cases
    ]
    path.write_text(
        json.dumps(
            {
                "per_strategy": {"combined": scores},
                "per_inducer": {f"combined/{i}": [s for s in scores if s["inducer"] == i] for _, i, _ in cases},
                "per_kind": {"combined/code": scores},
            }
        )
    )


def test_rescore_counts_hand_labels_per_inducer_and_per_traffic_type_across_runs(tmp_path, monkeypatch):
    labels = tmp_path / "rescue_labels.jsonl"
    labels.write_text(
        '{"key": "inducers:a@freq", "label": "healthy", "note": ""}\n'
        '{"key": "inducers:b@bias", "label": "incoherent", "note": ""}\n'
        '{"key": "enumeration:c", "label": "healthy", "note": ""}\n'
    )
    monkeypatch.setattr("lab.eval.rescue_eval.rescue_labels_path", lambda: labels)
    inducers, enumeration = tmp_path / "inducers.json", tmp_path / "enumeration.json"
    _results(inducers, [("a@freq", "frequency_penalty", True), ("b@bias", "logit_bias", True)])
    _results(enumeration, [("c", "none", True), ("d", "none", False)])
    args = argparse.Namespace(results=inducers, with_results=[enumeration], figures=tmp_path / "figures")
    merged = rescore(args)
    hand = {name: row["hand_labels"] for name, row in merged["summary_per_inducer"].items()}
    assert hand["combined/frequency_penalty"]["rescued_healthy_by_hand"] == 1
    assert hand["combined/logit_bias"]["rate"] == 0.0
    assert (hand["combined/none"]["cases_judged"], hand["combined/none"]["rate"]) == (2, 0.5)
    written = json.loads(enumeration.read_text())["summary_per_kind"]["combined/code"]["hand_labels"]
    assert written == {"cases_judged": 2, "rescued_healthy_by_hand": 1, "rate": 0.5}
    assert Path(merged["figure"]).is_file()

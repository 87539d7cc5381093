"""How ``sinkwatch eval rescue`` scores a rescue: success needs a rescued answer that passes both checks."""

import asyncio

from gateway.gate.policy import GateConfig, Policy
from lab.eval.rescue_eval import score_run, summarize
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

"""The gate's decisions on scripted generations: hold-back, block, rescue, budgets, error mode."""

import asyncio

import pytest

from gateway.errors import ContentBlocked
from gateway.gate.monitor import prefill_sampling
from gateway.gate.policy import Policy
from tests.gate.scripted import REQUEST, ScriptedBackend, ScriptedMonitor, controller, run, token_text


def _texts(call: int, indices) -> str:
    return "".join(token_text(call, i) for i in indices)


def test_nothing_fires_everything_passes_in_order():
    backend = ScriptedBackend([12])
    gate = controller(backend, Policy.RESCUE, [ScriptedMonitor(None)], holdback_tokens=4)
    assert "".join(run(gate, backend)) == _texts(0, range(12))
    assert (gate.result.action, gate.result.outcome, gate.result.finish_reason) == ("pass", None, "length")
    assert gate.result.completion_tokens == 12


def test_block_keeps_the_stable_prefix_and_never_sends_the_rest():
    backend = ScriptedBackend([40])
    gate = controller(backend, Policy.BLOCK, [ScriptedMonitor(fire_at=20, last_stable=15)], holdback_tokens=8)
    assert "".join(run(gate, backend)) == _texts(0, range(16))
    assert (gate.result.action, gate.result.outcome, gate.result.finish_reason) == (
        "block",
        "blocked",
        "content_filter",
    )
    assert gate.result.withheld_tokens == 21 - 16
    assert gate.result.leaked_tokens == 0
    assert gate.result.attempts[0].rollback_to == 16
    assert backend.closed == 1 and backend.produced == 21


@pytest.mark.parametrize("policy", [Policy.BLOCK, Policy.RESCUE])
def test_block_and_rescue_refuse_to_act_on_a_monitor_that_does_not_judge(policy):
    backend = ScriptedBackend([40])
    gate = controller(backend, policy, [ScriptedMonitor(fire_at=20, last_stable=15, judges=False)], holdback_tokens=8)
    assert "".join(run(gate, backend)) == _texts(0, range(40))
    report = gate.report()
    assert (report.action, report.reason, report.outcome) == ("none", "uncalibrated", None)
    assert gate.result.finish_reason == "length" and len(gate.result.attempts) == 1


def test_a_stable_point_behind_what_was_sent_is_counted_as_leaked_never_taken_back():
    backend = ScriptedBackend([40])
    # fires on token 20 with a stable point at 5: with hold-back 8, tokens 0..11 were already sent
    gate = controller(backend, Policy.BLOCK, [ScriptedMonitor(20, 5)], holdback_tokens=8)
    assert len(run(gate, backend)) == 12
    assert gate.result.attempts[0].kept == 12
    assert gate.result.leaked_tokens == 12 - 6


def test_hold_back_delays_release_by_that_many_tokens():
    backend = ScriptedBackend([10])
    generated_at_release = []

    async def go():
        gate = controller(backend, Policy.BLOCK, [ScriptedMonitor(None)], holdback_tokens=3)
        events = backend.generate(REQUEST)
        await anext(events)
        async for _ in gate.run(events):
            generated_at_release.append(backend.produced)

    asyncio.run(go())
    # token i is released once token i + 3 exists; the last three leave together when the generation ends
    assert generated_at_release == [4, 5, 6, 7, 8, 9, 10, 10]


def test_a_repetitive_stretch_is_held_until_the_verdict_settles_it():
    # ids repeat a 3-token cycle from token 10 on, so the first repeated 4-gram starts at 13 and is known at
    # 16; the monitor vouches for everything until it fires at 30 and then places its stable point before
    # the stretch (at 12), as the detector does
    backend = ScriptedBackend([40], ids=lambda call, i: i if i < 10 else 1000 + i % 3)
    gate = controller(backend, Policy.BLOCK, [ScriptedMonitor(30, 12)], holdback_tokens=3)
    assert "".join(run(gate, backend)) == _texts(0, range(13))
    assert gate.result.leaked_tokens == 0


def test_rescue_resamples_from_the_stable_prefix_with_a_changed_request():
    backend = ScriptedBackend([30, 12])
    monitors = [ScriptedMonitor(20, 9), ScriptedMonitor(None)]
    gate = controller(backend, Policy.RESCUE, monitors, holdback_tokens=16)
    kept = _texts(0, range(10))
    assert "".join(run(gate, backend)) == kept + _texts(1, range(12))
    retry = backend.requests[1]
    assert retry.continuation == kept
    assert retry.request_id != REQUEST.request_id
    assert retry.sampling.seed != REQUEST.sampling.seed
    assert retry.sampling.temperature > REQUEST.sampling.temperature
    assert retry.sampling.max_tokens == 40 - 10
    assert monitors[1].primed == list(range(100 * 0, 10))
    assert (gate.result.action, gate.result.outcome) == ("rescue", "rescued")
    assert gate.result.discarded_tokens == 21 - 10
    assert gate.result.completion_tokens == 10 + 12
    assert [a.strategy for a in gate.result.attempts] == [None, "ngram_bias"]


def test_only_the_first_attempt_computes_the_prefill_risk_and_the_report_carries_it():
    backend = ScriptedBackend([30, 12])
    monitors = [ScriptedMonitor(20, 9), ScriptedMonitor(None)]
    monitors[0].prefill_risk = 0.42  # what the first attempt's monitor computed at its first token
    gate = controller(backend, Policy.RESCUE, monitors, holdback_tokens=16)
    run(gate, backend)
    assert monitors[0].sampling == prefill_sampling(REQUEST.sampling)
    assert monitors[1].sampling is None
    assert gate.prefill_risk == 0.42


def test_every_rescue_starts_from_the_client_request_not_the_previous_retry():
    backend = ScriptedBackend([30, 30, 12])
    monitors = [ScriptedMonitor(10, 4), ScriptedMonitor(10, 4), ScriptedMonitor(None)]
    gate = controller(backend, Policy.RESCUE, monitors, holdback_tokens=16, rescue_strategy="constrain")
    run(gate, backend)
    for retry in backend.requests[1:]:
        system = [m for m in retry.prompt.messages if m["role"] == "system"]
        assert len(system) == 1
    assert backend.requests[2].continuation == _texts(0, range(5)) + _texts(1, range(5))
    assert gate.result.outcome == "rescued"


def test_rescue_that_keeps_failing_falls_back_to_block_after_the_attempt_limit():
    backend = ScriptedBackend([30, 30, 30])
    monitors = [ScriptedMonitor(10, 4) for _ in range(3)]
    gate = controller(backend, Policy.RESCUE, monitors, holdback_tokens=16, rescue_attempts=2)
    pieces = run(gate, backend)
    assert len(backend.requests) == 3
    assert (gate.result.action, gate.result.outcome, gate.result.finish_reason) == (
        "block",
        "rescue_failed",
        "content_filter",
    )
    assert "".join(pieces) == _texts(0, range(5)) + _texts(1, range(5)) + _texts(2, range(5))
    assert gate.result.discarded_tokens == 2 * 6 and gate.result.withheld_tokens == 6


def test_rescue_stops_once_the_discarded_tokens_would_pass_the_budget():
    backend = ScriptedBackend([30, 30, 30])
    monitors = [ScriptedMonitor(10, 4) for _ in range(3)]
    gate = controller(backend, Policy.RESCUE, monitors, holdback_tokens=16, rescue_token_budget=8)
    run(gate, backend)
    assert len(backend.requests) == 2
    assert gate.result.outcome == "rescue_failed"
    assert gate.result.discarded_tokens == 6 and gate.result.withheld_tokens == 6


def test_a_refused_rescue_falls_back_to_block_and_says_why():
    backend = ScriptedBackend([30, 30], refuse_from=1)
    gate = controller(backend, Policy.RESCUE, [ScriptedMonitor(10, 4), ScriptedMonitor(None)], holdback_tokens=16)
    assert "".join(run(gate, backend)) == _texts(0, range(5))
    assert gate.result.finish_reason == "content_filter"
    assert gate.result.attempts[1].error == "the engine queue is full"


def test_error_mode_raises_an_openai_error():
    backend = ScriptedBackend([30])
    gate = controller(backend, Policy.BLOCK, [ScriptedMonitor(10, 4)], block_mode="error")
    with pytest.raises(ContentBlocked) as blocked:
        run(gate, backend)
    assert blocked.value.status_code == 422


def test_non_streaming_rolls_back_to_the_stable_point_whatever_the_hold_back():
    backend = ScriptedBackend([40])
    gate = controller(backend, Policy.BLOCK, [ScriptedMonitor(30, 3)], streaming=False, holdback_tokens=1)
    assert "".join(run(gate, backend)) == _texts(0, range(4))
    assert gate.holdback is None


@pytest.mark.parametrize("policy", [Policy.OBSERVE, Policy.ANNOTATE])
def test_observe_and_annotate_never_hold_back_or_act(policy):
    backend = ScriptedBackend([30])
    gate = controller(backend, policy, [ScriptedMonitor(5, 1)], holdback_tokens=8)
    assert len(run(gate, backend)) == 30
    assert gate.holdback == 0
    assert gate.result.action == ("annotate" if policy is Policy.ANNOTATE else "pass")
    assert gate.detected is not None and gate.detected.fired


def test_closing_the_gate_stops_the_attempt_under_way():
    backend = ScriptedBackend([30, 1000])
    gate = controller(backend, Policy.RESCUE, [ScriptedMonitor(10, 4), ScriptedMonitor(None)], holdback_tokens=0)

    async def go():
        events = backend.generate(REQUEST)
        await anext(events)
        pieces = gate.run(events)
        while len(backend.requests) < 2 or backend.produced < 5:
            await anext(pieces)
        await gate.aclose()

    asyncio.run(go())
    assert backend.closed == 2 and backend.produced < 1000

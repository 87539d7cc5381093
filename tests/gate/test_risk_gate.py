"""The gate under ``block_at``: block and rescue act on stability.risk, and a rescue reports what of the
client's sampling it neutralised."""

from dataclasses import replace

from gateway.gate.controller import GateController
from gateway.gate.monitor import shifted
from gateway.gate.policy import GateConfig, Policy
from monitors.calibration import load_calibration, shipped_calibration_path
from monitors.detector import StabilityDetector
from monitors.features import StepFeatures
from monitors.verdict import Verdict, VerdictLevel
from tests.gate.scripted import REQUEST, ScriptedBackend, ScriptedMonitor, controller, loop_after, run


class RiskMonitor(ScriptedMonitor):
    """Risk ``step * i`` at token i; fires ``sink`` from ``fire_at`` on (never when None)."""

    judges = True

    def __init__(self, fire_at: int | None = None, step: float = 0.05) -> None:
        super().__init__(fire_at)
        self.step = step

    def observe(self, features: StepFeatures) -> Verdict:
        self.tokens += 1
        i = features.index
        level = VerdictLevel.SINK if self.fire_at is not None and i >= self.fire_at else VerdictLevel.OK
        self._verdict = Verdict(level, i, last_stable_token=min(i, 2), risk=self.step * i)
        return self.verdict

    @property
    def verdict(self) -> Verdict:
        return shifted(self._verdict, 0)


def test_block_acts_once_the_risk_reaches_block_at_even_before_the_verdict_fires():
    backend = ScriptedBackend([30])
    gate = controller(backend, Policy.BLOCK, [RiskMonitor()], holdback_tokens=16, block_at=0.5)
    run(gate, backend)
    assert gate.result.action == "block"
    assert gate.result.attempts[0].fired_at == 10
    assert gate.report().block_at == 0.5


def test_a_verdict_below_block_at_does_not_block():
    backend = ScriptedBackend([30])
    gate = controller(backend, Policy.BLOCK, [RiskMonitor(fire_at=5, step=0.01)], holdback_tokens=16, block_at=0.9)
    run(gate, backend)
    assert gate.result.action == "pass" and gate.result.finish_reason == "length"
    assert gate.detected.level is VerdictLevel.SINK


def test_without_block_at_the_verdict_decides():
    verdict = Verdict(VerdictLevel.SINK, 3, risk=0.01)
    assert GateConfig().acts_on(verdict)
    assert not GateConfig(block_at=0.5).acts_on(verdict)
    assert GateConfig(block_at=0.5).acts_on(replace(verdict, level=VerdictLevel.OK, risk=0.6))
    # a calibration without a risk model: block_at cannot apply, the verdict decides
    assert GateConfig(block_at=0.5).acts_on(replace(verdict, risk=None))


def test_a_rescue_neutralises_the_clients_negative_penalty_and_says_so():
    ids, _ = loop_after(5)
    backend = ScriptedBackend([30, 12], ids=ids)
    request = replace(REQUEST, sampling=replace(REQUEST.sampling, frequency_penalty=-1.0, logit_bias={1001: 5.0}))
    monitors = iter([ScriptedMonitor(20, 4), ScriptedMonitor(None)])
    gate = GateController(
        backend, request, Policy.RESCUE, GateConfig(holdback_tokens=16), lambda: next(monitors), streaming=True
    )
    run(gate, backend)
    retry = backend.requests[1].sampling
    assert retry.frequency_penalty == 0.0
    assert retry.logit_bias.get(1001, 0.0) <= 0
    assert gate.result.outcome == "rescued"
    attempts = gate.report().attempts
    assert attempts[0].neutralised == []
    assert attempts[1].neutralised == ["frequency_penalty", "logit_bias"]


def test_block_at_weighs_a_prefill_risk_as_it_weighs_the_signals():
    """``stability.risk`` is never below the prefill risk, so an operator acting at a risk acts on a prompt the
    probe rates above it, and not on one the probe's own alarm level would fire on when that is below it."""
    shipped = load_calibration(shipped_calibration_path("SmolLM2-135M-Instruct"))
    alarm = shipped.prefill_probe.alarm_level
    for prefill_risk, block_at, acts in [(alarm, alarm, True), (alarm, (1 + alarm) / 2, False), (0.5, 0.4, True)]:
        detector = StabilityDetector(shipped)
        detector.note_prefill_risk(prefill_risk)
        verdict = detector.update(StepFeatures(0, 11, 1, {"entropy": 2.0}))
        assert verdict.risk == prefill_risk
        assert GateConfig(block_at=block_at).acts_on(verdict) is acts

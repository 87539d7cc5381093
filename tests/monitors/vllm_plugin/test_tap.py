"""The tap on vLLM's model runner: which rows of the flattened batch belong to which monitored request.

The runner here is a stand-in with the attributes of vLLM's V1 ``GPUModelRunner`` that the tap reads
(the real one is exercised by the integration test, ``-m vllm``).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monitors.vllm_plugin.tap import RunnerTap, resolve_calibration
from monitors.vllm_plugin.wire import RequestTag

D, VOCAB = 4, 32


class Publisher:
    """Records the steps handed to it; refuses them when told to."""

    def __init__(self) -> None:
        self.steps = []
        self.accept = True

    def submit(self, step) -> bool:
        if self.accept:
            self.steps.append(step)
        return self.accept


def _tag(name: str) -> dict:
    return RequestTag(f"gw-{name}", "tcp://127.0.0.1:9").to_xargs()


def _runner(batch: list[tuple[str, int, bool]], extra_args: dict[str, dict | None], aux_layers: int = 2):
    """A runner whose batch holds ``(engine id, scheduled tokens, partial prefill)`` rows in order."""
    counts = [n for _, n, _ in batch]
    tokens = sum(counts)
    aux = [torch.arange(tokens * D, dtype=torch.float32).reshape(tokens, D) + 1000 * k for k in range(aux_layers)]
    state = SimpleNamespace(
        aux_hidden_states=aux,
        spec_decode_metadata=None,
        logits=torch.randn(len(batch), VOCAB, generator=torch.Generator().manual_seed(0)),
    )
    requests = {
        engine_id: SimpleNamespace(sampling_params=SimpleNamespace(extra_args=args))
        for engine_id, args in extra_args.items()
    }
    return SimpleNamespace(
        execute_model_state=state,
        input_batch=SimpleNamespace(num_reqs=len(batch), req_ids=[e for e, _, _ in batch]),
        discard_request_mask=SimpleNamespace(np=np.array([partial for _, _, partial in batch] + [False] * 4)),
        query_start_loc=SimpleNamespace(np=np.array([0, *np.cumsum(counts), tokens, tokens])),
        requests=requests,
    )


def _output(sampled: list[list[int]]):
    return SimpleNamespace(sampled_token_ids=sampled)


def test_each_monitored_request_gets_the_states_at_its_last_scheduled_position():
    # a 3-token prefill, a decode, an unmonitored decode, a 2-token prefill: 7 tokens flattened
    batch = [("e-a", 3, False), ("e-b", 1, False), ("e-x", 1, False), ("e-c", 2, False)]
    runner = _runner(batch, {"e-a": _tag("a"), "e-b": _tag("b"), "e-x": None, "e-c": _tag("c")})
    publisher = Publisher()
    tap = RunnerTap(runner, publisher)
    tap.publish(tap.capture(), _output([[11], [12], [13], [14]]))
    (step,) = publisher.steps
    assert step.engine_ids == ["e-a", "e-b", "e-c"]
    assert [t.request_id for t in step.tags] == ["gw-a", "gw-b", "gw-c"]
    assert step.token_ids == [11, 12, 14]
    aux = runner.execute_model_state.aux_hidden_states
    for row, position in enumerate([2, 3, 6]):
        for layer in range(2):
            assert np.array_equal(step.states[row, layer], aux[layer][position].numpy())
    sampled = torch.log_softmax(runner.execute_model_state.logits[[0, 1, 3]], dim=-1)
    assert step.row_entropies() == pytest.approx(-(sampled.exp() * sampled).sum(dim=-1).numpy(), abs=1e-5)


def test_partial_prefill_chunks_sample_nothing_and_publish_nothing():
    runner = _runner([("e-a", 4, True), ("e-b", 1, False)], {"e-a": _tag("a"), "e-b": _tag("b")})
    publisher = Publisher()
    tap = RunnerTap(runner, publisher)
    tap.publish(tap.capture(), _output([[], [7]]))
    assert publisher.steps[0].engine_ids == ["e-b"]


def test_a_step_without_monitored_requests_costs_nothing():
    runner = _runner([("e-x", 1, False)], {"e-x": None})
    publisher = Publisher()
    tap = RunnerTap(runner, publisher)
    assert tap.capture() is None
    tap.publish(None, _output([[1]]))
    assert publisher.steps == []


def test_requests_that_leave_the_runner_are_reported_ended():
    runner = _runner([("e-a", 1, False), ("e-b", 1, False)], {"e-a": _tag("a"), "e-b": _tag("b")})
    publisher = Publisher()
    tap = RunnerTap(runner, publisher)
    tap.publish(tap.capture(), _output([[1], [2]]))
    del runner.requests["e-a"]  # finished or aborted: vLLM dropped its state
    runner.input_batch.num_reqs, runner.input_batch.req_ids = 1, ["e-b"]
    tap.publish(tap.capture(), _output([[3]]))
    assert publisher.steps[1].ended == ["e-a"] and publisher.steps[1].engine_ids == ["e-b"]


def test_a_request_keeps_being_monitored_while_preempted():
    runner = _runner([("e-a", 1, False)], {"e-a": _tag("a"), "e-b": _tag("b")})
    publisher = Publisher()
    tap = RunnerTap(runner, publisher)
    tap.publish(tap.capture(), _output([[1]]))
    runner.input_batch.req_ids = ["e-b"]  # e-a preempted: out of the batch, still in the request table
    tap.publish(tap.capture(), _output([[2]]))
    runner.input_batch.req_ids = ["e-a"]  # resumed after recomputing its prefix
    tap.publish(tap.capture(), _output([[3]]))
    assert [s.engine_ids for s in publisher.steps] == [["e-a"], ["e-b"], ["e-a"]]
    assert all(s.ended == [] for s in publisher.steps)


def test_requests_the_publisher_could_not_take_stop_being_monitored():
    runner = _runner([("e-a", 1, False)], {"e-a": _tag("a")})
    publisher = Publisher()
    tap = RunnerTap(runner, publisher)
    publisher.accept = False
    tap.publish(tap.capture(), _output([[1]]))
    publisher.accept = True
    assert tap.capture() is None  # a window with a hole in it would not be the embedded engine's


def test_under_async_scheduling_token_ids_are_left_to_the_gateway():
    runner = _runner([("e-a", 1, False)], {"e-a": _tag("a")})
    publisher = Publisher()
    tap = RunnerTap(runner, publisher)
    tap.publish(tap.capture(), SimpleNamespace())  # vLLM's async output: token ids still on the device
    assert publisher.steps[0].token_ids == [-1]


def test_the_calibration_is_the_served_names_own_else_the_model_is_monitored_uncalibrated_on_its_thirds(tmp_path):
    shipped = resolve_calibration("", ["SmolLM2-135M-Instruct"], 30)
    assert (shipped.model, shipped.calibrated) == ("SmolLM2-135M-Instruct", True)
    other = resolve_calibration("", ["gemma-3-270m", "gemma"], 18)  # never SmolLM2's thresholds
    assert (other.model, other.calibrated, other.signals) == ("gemma-3-270m", False, ())
    assert [band.layers for band in other.bands] == [(3, 4), (8, 10), (14, 16)]
    with pytest.raises(FileNotFoundError):
        resolve_calibration(str(tmp_path / "absent.json"), ["SmolLM2-135M-Instruct"], 30)


def test_an_awaited_calibration_not_written_yet_leaves_the_model_uncalibrated(tmp_path):
    awaited = resolve_calibration(str(tmp_path / "later.json"), ["SmolLM2-135M-Instruct"], 30, awaited=True)
    assert (awaited.model, awaited.calibrated, awaited.signals) == ("SmolLM2-135M-Instruct", False, ())

"""The plugin's hold on a vLLM V1 model runner: decode-time states of the monitored requests.

States come out of the model through vLLM's EAGLE-3 auxiliary hidden-state outputs (the residual stream
``hidden + residual`` after chosen decoder layers, returned by the compiled graph itself), so capture
works with ``torch.compile`` and CUDA graphs, where forward hooks would be traced away or never run.
Aux slot ``k`` holds the output of decoder layer ``k - 1``; the embedded engine hooks the output of
decoder layer ``k - 1`` too, so both see the same residual stream.

Between the forward pass and sampling, the tap takes, for each monitored request that samples a token
this step (a decode step, or the last chunk of a prefill: partial prefill chunks sample nothing), the
states at the request's last scheduled position (the position whose logits give the token) and the
entropy of those raw logits (computed on the accelerator; on a CPU host the logits rows go to the
publisher, which computes it off the model's cores); after sampling it adds the token ids and hands the
step to the publisher.
Requests are keyed by the engine's request id: they keep their extractor through preemption and
recomputation, and lose it when they finish or are aborted (they leave the runner's request table).
"""

import logging
from dataclasses import dataclass
from typing import Any

import torch

from monitors.bands import default_bands
from monitors.calibration import Calibration, load_calibration
from monitors.entropy import next_token_entropies
from monitors.model_profile import ModelProfile, uncalibrated
from monitors.vllm_plugin.publisher import FeaturePublisher
from monitors.vllm_plugin.step import CapturedStep
from monitors.vllm_plugin.wire import RequestTag

__all__ = ["RunnerTap", "resolve_calibration"]

log = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger, so it shows in its log


@dataclass
class _Rows:
    """The monitored rows of the batch between the forward pass and sampling."""

    batch_rows: list[int]
    engine_ids: list[str]
    tags: list[RequestTag]
    states: torch.Tensor
    entropies: torch.Tensor | None  # computed on the accelerator, or
    logits: torch.Tensor | None  # the rows' logits, for the publisher to compute them from (CPU)


class RunnerTap:
    """Captures the monitored requests of one model runner and feeds the publisher."""

    def __init__(self, runner: Any, publisher: FeaturePublisher) -> None:
        self._runner = runner
        self._publisher = publisher
        self._tags: dict[str, RequestTag | None] = {}  # engine request id -> tag (None: not monitored)
        self._ended: list[str] = []

    def capture(self) -> _Rows | None:
        """Before sampling: states and entropies of the rows that sample a monitored token this step."""
        state = self._runner.execute_model_state
        self._forget_ended()
        if state is None or state.aux_hidden_states is None or state.spec_decode_metadata is not None:
            return None
        batch = self._runner.input_batch
        num_reqs = batch.num_reqs
        discarded = self._runner.discard_request_mask.np[:num_reqs]
        rows, engine_ids, tags = [], [], []
        for row, engine_id in enumerate(batch.req_ids[:num_reqs]):
            tag = self._tag(engine_id)
            if tag is not None and not discarded[row]:
                rows.append(row)
                engine_ids.append(engine_id)
                tags.append(tag)
        if not rows:
            return None
        last_positions = self._runner.query_start_loc.np[[r + 1 for r in rows]] - 1
        positions = torch.from_numpy(last_positions).to(state.logits.device, dtype=torch.long)
        states = torch.stack([aux.index_select(0, positions) for aux in state.aux_hidden_states], dim=1)
        # index_select: a list index (``logits[rows]``) takes ~10x longer on CPU, on the runner's critical path
        logits = state.logits.index_select(0, torch.tensor(rows, device=state.logits.device))
        if logits.device.type == "cpu":
            return _Rows(rows, engine_ids, tags, states, entropies=None, logits=logits)
        return _Rows(rows, engine_ids, tags, states, entropies=next_token_entropies(logits), logits=None)

    def step_started(self) -> None:
        """The runner began an engine step (tells the publisher that the engine core has scheduled it)."""
        self._publisher.runner_started_step()

    def publish(self, rows: _Rows | None, output: Any) -> None:
        """After sampling: attach the sampled token ids and hand the step to the publisher."""
        if rows is None:
            return
        sampled = getattr(output, "sampled_token_ids", None)  # absent under async scheduling
        token_ids = [sampled[r][0] if isinstance(sampled, list) and sampled[r] else -1 for r in rows.batch_rows]
        step = CapturedStep(
            engine_ids=rows.engine_ids,
            tags=rows.tags,
            token_ids=token_ids,
            states=rows.states.float().cpu().numpy(),
            entropies=None if rows.entropies is None else rows.entropies.cpu().numpy(),
            ended=self._ended,
            logits=rows.logits,
        )
        if self._publisher.submit(step):
            self._ended = []
            return
        log.warning("sinkwatch: publisher behind; %d requests are no longer monitored", len(rows.engine_ids))
        for engine_id in rows.engine_ids:
            self._tags[engine_id] = None

    def _tag(self, engine_id: str) -> RequestTag | None:
        if engine_id not in self._tags:
            params = self._runner.requests[engine_id].sampling_params
            tag = RequestTag.from_extra_args(params.extra_args if params else None)
            self._tags[engine_id] = tag.for_engine_request(engine_id) if tag is not None else None
        return self._tags[engine_id]

    def _forget_ended(self) -> None:
        """Requests that left the runner (finished, aborted) end their monitoring."""
        requests = self._runner.requests
        for engine_id in [e for e in self._tags if e not in requests]:
            if self._tags.pop(engine_id) is not None:
                self._ended.append(engine_id)


def resolve_calibration(
    configured: str, served_names: list[str], num_layers: int, awaited: bool = False
) -> Calibration:
    """``SINKWATCH_CALIBRATION`` if set, else the calibration shipped for one of the served names, else the
    first name uncalibrated on the thirds of the model's ``num_layers`` (outlier dimensions and mean states
    would need a pass of the model, which the plugin does not make). A configured calibration that does not
    exist is an error unless ``awaited`` (it is written later; the model is uncalibrated until then)."""
    for candidate in [configured] if configured else served_names:
        try:
            return load_calibration(candidate)
        except FileNotFoundError:
            if configured and not awaited:
                raise
    return uncalibrated(served_names[0], ModelProfile(default_bands(num_layers), {}, {}))

"""A monitored generation being recorded: its trace, and the recorder its record goes to when it finishes."""

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gateway.recording.recorder import TrafficRecorder
from gateway.recording.trace import SignalTrace, generation_record

__all__ = ["ShadowRecording"]


@dataclass
class ShadowRecording:
    """Collects one generation's signals; :meth:`finish` hands its record to the recorder (once)."""

    recorder: TrafficRecorder
    context: dict[str, Any]
    trace: SignalTrace = field(default_factory=SignalTrace)
    finished: bool = False

    def finish(self, finish_reason: str, token_ids: list[int]) -> None:
        """The generation ended with ``finish_reason``: queue its record (token ids only with ``--record-text``)."""
        if self.finished or not self.trace.tokens:
            return
        self.finished = True
        kept = list(token_ids) if self.recorder.record_text else None
        self.recorder.submit(partial(generation_record, self.trace, self.context, finish_reason, kept, time.time()))

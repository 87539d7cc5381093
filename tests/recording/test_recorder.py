"""The recording directory: bounded by rotation (oldest segments deleted), written off the caller's thread,
and a write that fails is logged and counted, never raised."""

import json
import threading
from collections.abc import Callable
from pathlib import Path

from gateway import metrics
from gateway.recording.recorder import SEGMENT_SHARE, TrafficRecorder, segments
from gateway.recording.trace import SignalTrace


def _record(number: int, size: int) -> Callable[[], dict]:
    """What a finished generation submits: the builder of its record."""
    return lambda: {"model": "m", "number": number, "signals": {"x": [0.5] * size}}


def _failures(reason: str) -> float:
    return metrics.RECORDING_FAILURES.labels(reason)._value.get()


def test_the_directory_stays_under_its_limit_and_keeps_the_newest_records(tmp_path: Path):
    limit = 40_000
    recorder = TrafficRecorder(tmp_path / "rec", limit)
    for number in range(300):
        recorder.submit(_record(number, 100))
    recorder.close()
    kept = segments(tmp_path / "rec")
    assert len(kept) > 1
    assert sum(p.stat().st_size for p in kept) <= limit
    numbers = [json.loads(line)["number"] for p in kept for line in p.read_text().splitlines()]
    assert numbers == sorted(numbers)
    assert numbers[-1] == 299 and numbers[0] > 0  # the oldest went, the newest stayed, in order
    assert all(p.stat().st_size <= limit // SEGMENT_SHARE for p in kept)


def test_a_write_error_is_counted_and_the_caller_never_sees_it(tmp_path: Path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the directory should be")
    before = _failures("write_error")
    recorder = TrafficRecorder(blocked, 10_000)
    recorder.submit(_record(0, 10))
    recorder.submit(_record(1, 10))
    recorder.close()
    assert _failures("write_error") == before + 2


def test_records_are_built_and_written_by_the_recorders_own_thread(tmp_path: Path, monkeypatch):
    threads = []
    recorder = TrafficRecorder(tmp_path, 100_000)
    original = recorder._write

    def spy(record: dict) -> None:
        threads.append(("write", threading.current_thread().name))
        original(record)

    def build() -> dict:
        threads.append(("build", threading.current_thread().name))
        return {"model": "m"}

    monkeypatch.setattr(recorder, "_write", spy)
    recorder.submit(build)
    recorder.close()
    assert threads == [("build", "sinkwatch-recorder"), ("write", "sinkwatch-recorder")]


def test_a_trace_aligns_signals_that_start_late_and_leaves_out_derived_ones():
    trace = SignalTrace()
    trace.add({"entropy": 1.0, "text.periodicity": 0.0})
    trace.add({"entropy": 2.0, "text.periodicity": 0.0, "late.pr": 9.123456, "late.rank_margin": 1.0})
    trace.add({"entropy": float("nan"), "text.periodicity": 0.5, "late.pr": 8.0})
    assert trace.values == {
        "entropy": [1.0, 2.0, None],
        "text.periodicity": [0.0, 0.0, 0.5],
        "late.pr": [None, 9.1235, 8.0],
    }
    assert trace.extremes()["late.pr"] == {"min": 8.0, "max": 9.1235}


def test_a_full_queue_drops_records_instead_of_waiting(tmp_path: Path, monkeypatch):
    from gateway.recording import recorder as module

    monkeypatch.setattr(module, "QUEUE_LIMIT", 3)
    release = threading.Event()
    recorder = TrafficRecorder(tmp_path, 100_000)
    original = recorder._write

    def stuck(record: dict) -> None:
        release.wait()
        original(record)

    monkeypatch.setattr(recorder, "_write", stuck)
    before = _failures("queue_full")
    for number in range(10):  # one taken by the stuck writer, three queued, the rest dropped
        recorder.submit(_record(number, 1))
    dropped = _failures("queue_full") - before
    release.set()
    recorder.close()
    written = sum(len(p.read_text().splitlines()) for p in segments(tmp_path))
    assert dropped >= 6 and written + dropped == 10

"""Recorded traffic (``sinkwatch serve --policy observe --record-dir DIR``) read back for calibration.

Each record (:mod:`gateway.recording.trace`) becomes a :class:`RecordedGeneration`: its per-token signal
trajectories, length, finish reason, time and the setup they were computed with. A recording made under
several setups (a calibration with other bands or another reference reloaded or restarted in between) is
read for one setup only: the base calibration's when one is named, else the one most records have; signals
computed differently do not mix.
"""

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.recording.trace import calibration_setup
from monitors.calibration import Calibration, SignalThreshold, tracked
from monitors.model_profile import UNCALIBRATED

__all__ = [
    "RecordedGeneration",
    "SetupMismatch",
    "by_time",
    "read_recording",
    "recorded_uncalibrated",
    "recording_setup",
    "setup_key",
]

# What must agree between records for their signals to be comparable.
_SETUP_FIELDS = ("bands", "window", "outlier_dims", "recurrence_levels")


class SetupMismatch(ValueError):
    """The recording holds no records usable together."""


@dataclass
class RecordedGeneration:
    """One recorded generation. Unlabelled: ``healthy`` is True for every generation kept for fitting (the
    loop filter drops visible loops first); it mirrors :class:`lab.eval.dataset.Generation` where
    :mod:`lab.eval.thresholds` reads one (``values``, ``length``, ``healthy``, ``entry.prompt_id``)."""

    key: str
    time: float
    length: int
    finish_reason: str
    model: str
    setup: dict[str, Any]
    trajectories: dict[str, np.ndarray] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    healthy: bool = True

    @property
    def entry(self) -> "RecordedGeneration":
        """Itself: cross-fitting folds group by ``entry.prompt_id``; every recorded generation is its own."""
        return self

    @property
    def prompt_id(self) -> str:
        return self.key

    def values(self, name: str) -> np.ndarray:
        """A signal's trajectory; all NaN where it was never defined."""
        return self.trajectories.get(name, np.full(self.length, np.nan))

    def holds_above(self, spec: SignalThreshold, span: int, persistence: int) -> bool:
        """Whether this generation's tracked ``spec`` stays past its threshold for its persistence."""
        values = self.values(spec.name)
        values = values[np.isfinite(values)]
        needed = spec.persistence or persistence
        if len(values) < needed:
            return False
        crossed = np.array([spec.crossed(v) for v in tracked(values, spec, span)], dtype=np.int64)
        return bool(np.convolve(crossed, np.ones(needed, dtype=np.int64), "valid").max() >= needed)


def recorded_uncalibrated(setup: dict[str, Any]) -> bool:
    """Whether the recording was made with no calibration in force (the model's derived profile only)."""
    return str(setup.get("calibration", "")).endswith(f"@{UNCALIBRATED}")


def setup_key(record: dict[str, Any]) -> str:
    """The record's setup, as a comparable key."""
    return json.dumps({name: record.get(name) for name in _SETUP_FIELDS}, sort_keys=True)


def _generation(record: dict[str, Any], key: str) -> RecordedGeneration:
    length = int(record["tokens"])
    trajectories = {
        name: np.array([np.nan if v is None else v for v in column], dtype=np.float64)
        for name, column in record["signals"].items()
        if len(column) == length
    }
    return RecordedGeneration(
        key=key,
        time=float(record["time"]),
        length=length,
        finish_reason=str(record.get("finish_reason")),
        model=str(record["model"]),
        setup={name: record.get(name) for name in (*_SETUP_FIELDS, "calibration", "calibration_sha256")},
        trajectories=trajectories,
        sampling=dict(record.get("sampling") or {}),
    )


def recording_setup(calibration: Calibration) -> dict[str, Any]:
    """The setup fields a gateway records under ``calibration`` (what its recorded signals depend on)."""
    recorded = calibration_setup(calibration, digest="")
    return {name: recorded[name] for name in _SETUP_FIELDS}


def read_recording(
    directory: Path, model: str | None = None, setup: dict[str, Any] | None = None
) -> tuple[list[RecordedGeneration], dict[str, int]]:
    """Every readable record of ``directory`` (for ``model`` when given) under ``setup`` (see
    :func:`recording_setup`), or when none is given under the most common setup; and what was left out, by
    reason (``unreadable``, ``other_model``, ``other_setup``)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no recording at {directory}")
    records, left_out = [], Counter()
    for segment in sorted(directory.glob("traffic-*.jsonl")):
        for number, line in enumerate(segment.read_text(errors="replace").splitlines()):
            try:
                record = json.loads(line)
                generation = _generation(record, f"{segment.name}:{number:09d}")
            except (ValueError, KeyError, TypeError):
                left_out["unreadable"] += 1  # a line cut short by a full disk or a kill
                continue
            if model is not None and generation.model != model:
                left_out["other_model"] += 1
                continue
            records.append((setup_key(record), generation))
    if not records:
        raise SetupMismatch(f"{directory} holds no readable records" + (f" for model {model}" if model else ""))
    models = {g.model for _, g in records}
    if len(models) > 1:
        raise SetupMismatch(f"{directory} records several models ({', '.join(sorted(models))}); name one with --model")
    wanted = setup_key(setup) if setup is not None else Counter(key for key, _ in records).most_common(1)[0][0]
    left_out["other_setup"] = sum(key != wanted for key, _ in records)
    kept = [g for key, g in records if key == wanted]
    if not kept:
        raise SetupMismatch(
            f"no record of {directory} was made under the base calibration's setup (bands, window, outlier "
            "dimensions, recurrence levels): record with it in force, or pass the calibration recorded under as --base"
        )
    return kept, dict(left_out)


def by_time(generations: Sequence[RecordedGeneration], held_out: float) -> tuple[list, list]:
    """The earlier ``1 - held_out`` of the generations (to fit on) and the later ``held_out`` (to check on):
    a calibration is used on traffic that comes after the traffic it was fitted on."""
    ordered = sorted(generations, key=lambda g: (g.time, g.key))
    cut = len(ordered) - max(1, round(held_out * len(ordered))) if held_out > 0 else len(ordered)
    return ordered[:cut], ordered[cut:]

"""What drives the novel PR down: four stressors on one model, each with the scored task's accuracy.

- ``constraints``: the first ``n`` system-prompt constraints (the exchange-rate list, extended to 50);
- ``precision``: the same model in float32, bfloat16 and int8 (dynamic quantization of its Linear layers);
- ``temperature``: sampling from greedy to far past the usual range;
- ``context``: one long human-written text (the repository's docs) prefilled up to the model's context limit
  in chunks over the KV cache (SDPA attention); its quality is the next-token loss at each position.

For the first three, every scored item is answered, then the prompt-plus-answer is teacher-forced once and
the served extractor replays the last window of prompt states followed by the answer's: what the detector
would see at the answer's end. Reported per level: each band's novel PR and its margin to the floor
(median over items, and the share of items below the floor), the share of undefined windows, accuracy.
"""

import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lab.eval.rank_corpus import novel_pr_lows, replay
from lab.eval.rank_floors import fires
from lab.eval.rank_subjects import Subject, load_subject
from lab.eval.rank_tasks import scored_items, stacked_constraints
from monitors.bands import LayerBand, captured_layers
from monitors.features import FeatureExtractor
from monitors.rank_exhaustion import NOVEL_PR

__all__ = [
    "WINDOW",
    "Measured",
    "answer_fires",
    "context_windows",
    "long_text",
    "measure_items",
    "replay_tail",
    "run_stressors",
    "window_end",
]

WINDOW = 32
PLAIN_SYSTEM = "You are a helpful assistant. Answer briefly."


@dataclass
class Measured:
    """One answered item: its task, correctness, and the states of its last window of prompt plus its answer
    (at the captured layers) with their token ids."""

    stressor: str
    level: float
    task: str
    correct: bool
    tail: np.ndarray
    ids: list[int]


def measure_items(
    subject: Subject, stressor: str, level: float, system: str, temperature: float, max_tokens: int, per_task: int
) -> list[Measured]:
    """Answer every scored item under ``system`` at ``temperature``; keep the states the detector would see."""
    layers = captured_layers(subject.bands)
    out = []
    for seed, item in enumerate(scored_items(per_task)):
        prompt = subject.prompt_ids(system, item.question)
        answer = subject.answer(prompt, max_tokens, temperature, seed)
        ids = prompt + answer
        states, _ = subject.states(ids, layers)
        tail = states[-(WINDOW + len(answer)) :]
        text = subject.tokenizer.decode(answer, skip_special_tokens=True)
        out.append(Measured(stressor, level, item.task, item.correct(text), tail, ids[-len(tail) :]))
    return out


def replay_tail(bands: Sequence[LayerBand], measured: Measured, levels: dict) -> dict[str, np.ndarray]:
    """The served extractor's features over a measured tail (the last window of prompt states, then the
    answer's), one row per token: what :func:`window_end` and :func:`answer_fires` read."""
    tail = measured.tail
    extractor = FeatureExtractor(bands, WINDOW, recurrence_levels=levels)
    return replay(tail, np.zeros(len(tail)), measured.ids, extractor, captured_layers(tuple(bands)))


def window_end(bands: Sequence[LayerBand], rows: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """Per band, the novel and plain PR of the last window of a replayed tail (NaN when undefined)."""

    def last(name: str) -> float:
        return float(rows[name][-1]) if name in rows else float("nan")

    novel = {b.name: last(f"{b.name}.{NOVEL_PR}") for b in bands}
    plain = {b.name: last(f"{b.name}.pr") for b in bands}
    return novel, plain


def answer_fires(
    bands: Sequence[LayerBand], rows: Mapping[str, np.ndarray], floors: Mapping[str, float], tracking: tuple[int, int]
) -> bool:
    """Whether the verdict would fire on a replayed tail's answer tokens: any band's novel PR, tracked as the
    detector tracks it (``tracking``: EWMA span, persistence), holds below its floor. The windows still hold
    prompt states, which the served detector never sees (``sinkwatch eval rank-served`` reads that)."""
    answer = slice(WINDOW, None)  # the tail is the last window of prompt states, then the answer's
    values = {name: column[answer] for name, column in rows.items()}
    return fires(novel_pr_lows(values, [b.name for b in bands], *tracking), floors)


def _int8(subject: Subject) -> Subject:
    """The subject with its Linear layers dynamically quantized to int8 (a copy; the float model stays)."""
    model = torch.ao.quantization.quantize_dynamic(subject.model, {torch.nn.Linear}, dtype=torch.qint8)
    return Subject(subject.name, model, subject.tokenizer, subject.chat, subject.bands, subject.max_context)


def run_stressors(
    subject: Subject,
    levels: Mapping[str, Sequence[float]],
    max_tokens: int,
    per_task: int,
    cache: Path,
    cached_only: bool = False,
    progress: Callable[[str], None] = print,
) -> list[Measured]:
    """Every stressor but context on ``subject`` (loaded in float32), one cached file per stressor and level
    under ``cache`` (an interrupted run resumes; with ``cached_only`` the levels not cached yet are left out).
    ``levels``: per stressor (``constraints``, ``temperature``, ``precision`` in bits: 32, 16 or 8); the
    unstressed answers (no constraint, greedy, float32) are measured once and serve as level 0 / 0 / 32."""
    rules = stacked_constraints()
    variants: dict[float, Callable[[], Subject]] = {
        32: lambda: subject,
        16: lambda: load_subject(subject.name, torch.bfloat16),
        8: lambda: _int8(subject),
    }

    def measure(stressor: str, level: float) -> list[Measured]:
        path = cache / f"{stressor}-{level:g}.pkl"
        if path.is_file():
            return pickle.loads(path.read_bytes())
        if (stressor, level) in (("temperature", 0), ("precision", 32)):
            measured = [_relabel(m, stressor, level) for m in measure("constraints", 0)]
        elif cached_only:
            return []
        else:
            system = " ".join(rules[: int(level)]) if stressor == "constraints" and level else PLAIN_SYSTEM
            temperature = level if stressor == "temperature" else 0.0
            model = variants[level]() if stressor == "precision" else subject
            measured = measure_items(model, stressor, level, system, temperature, max_tokens, per_task)
        if not measured:
            return []
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(measured))
        progress(f"{subject.name}: {stressor} {level:g}")
        return measured

    return [m for stressor, values in levels.items() for level in values for m in measure(stressor, level)]


def _relabel(measured: Measured, stressor: str, level: float) -> Measured:
    return Measured(stressor, level, measured.task, measured.correct, measured.tail, measured.ids)


def long_text(folder: Path) -> str:
    """Human-written prose for the context stressor: the repository's docs, concatenated."""
    return "\n\n".join(path.read_text() for path in sorted(folder.glob("*.md")))


def context_windows(
    subject: Subject, text: str, length: int, cache: Path, points: int = 16, cached_only: bool = False
) -> list[tuple[Measured, float]]:
    """Windows ending at ``points`` positions of one prefill of ``length`` tokens of ``text`` (as
    :class:`Measured` with ``level`` = the position), each with the mean next-token loss of the 256
    positions before it; cached under ``cache`` (with ``cached_only``, none unless cached)."""
    path = cache / f"context-{length}-{points}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    if cached_only:
        return []
    ids = subject.tokenizer(text)["input_ids"][:length]
    states, nll = subject.states(ids, captured_layers(subject.bands))
    out = []
    for end in np.linspace(WINDOW * 8, len(ids) - 1, points).astype(int):
        start = end + 1 - WINDOW * 2  # a window's worth of history before the window itself
        window = Measured("context", int(end), "text", True, states[start : end + 1], ids[start : end + 1])
        out.append((window, float(np.nanmean(nll[end - 256 : end]))))
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(out))
    return out

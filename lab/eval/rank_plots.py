"""Figures of ``sinkwatch eval rank``: novel PR against plain PR on the corpus, margins and quality under stress."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lab.eval.rank_corpus import CorpusTracks
from monitors.bands import LayerBand

__all__ = ["plot_corpus", "plot_lengths", "plot_stress"]

_STRESSORS = (
    ("constraints", "system-prompt constraints", "accuracy"),
    ("temperature", "sampling temperature", "accuracy"),
    ("precision", "bits (32 float, 16 bfloat, 8 int8 dynamic)", "accuracy"),
    ("context", "position in the context (tokens)", "nll"),
)


def plot_corpus(tracks: Sequence[CorpusTracks], floors: dict, bands: Sequence[LayerBand], folder: Path) -> None:
    """Per band: the per-generation lowest plain PR against the lowest novel PR, healthy against loops."""
    from lab.plotting import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, len(bands), figsize=(4 * len(bands), 3.8), squeeze=False)
    for axis, band in zip(axes[0], bands, strict=True):
        for healthy, colour, label in ((True, "tab:blue", "healthy"), (False, "tab:red", "loops, induced or visible")):
            group = [t for t in tracks if t.healthy == healthy]
            plain = [
                np.nanmin(t.values[f"{band.name}.pr"]) if np.isfinite(t.values[f"{band.name}.pr"]).any() else np.nan
                for t in group
            ]
            novel = [_low(t.values[f"{band.name}.pr_novel"]) for t in group]
            axis.scatter(plain, novel, s=10, c=colour, alpha=0.6, label=label)
        axis.axhline(floors.get(band.name, np.nan), color="black", lw=0.8, ls="--", label="novel-PR floor")
        axis.set_title(f"{band.name} band")
        axis.set_xlabel("lowest plain PR of the generation")
        axis.set_ylabel("lowest novel PR (all-recurrent windows: 0)")
    axes[0][0].legend(fontsize=7)
    save(fig, folder / "rank_novel_vs_plain.png")


def plot_lengths(report: dict, folder: Path) -> None:
    """Held-out false alarms per length bucket (a ``held_out`` report): per generation and per 1,000 tokens,
    each with its 95 % interval and the number of generations under its bar."""
    from lab.plotting import pyplot, save

    plt = pyplot()
    buckets = list(report["length"])
    rows = [report["length"][b] for b in buckets]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, (key, interval, label) in zip(
        axes,
        (
            ("rate", "ci95", "share of generations that fire"),
            ("per_1k_tokens", "per_1k_tokens_ci95", "per 1,000 tokens"),
        ),
        strict=True,
    ):
        values = np.array([r[key] for r in rows])
        bounds = np.array([r[interval] for r in rows], dtype=float)
        axis.bar(buckets, values, color="tab:blue", alpha=0.7)
        axis.errorbar(buckets, values, yerr=[values - bounds[:, 0], bounds[:, 1] - values], fmt="none", color="black")
        for x, r in enumerate(rows):
            axis.annotate(f"{r['fired']}/{r['generations']}", (x, 0), ha="center", va="bottom", fontsize=8)
        axis.set_xlabel("generation length (tokens)")
        axis.set_ylabel(f"held-out false alarms, {label}")
    fig.suptitle("rank floors on held-out healthy traffic, by length (95 % Wilson intervals)")
    save(fig, folder / "rank_by_length.png")


def _low(values: np.ndarray) -> float:
    """Lowest defined value; 0 when the novel PR was never defined (every window recurred)."""
    return float(np.nanmin(values)) if np.isfinite(values).any() else 0.0


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value


def plot_stress(study: dict, folder: Path) -> None:
    """Per stressor: each band's margin to the floor (left axis) and the task's quality (right axis)."""
    from lab.plotting import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, len(_STRESSORS), figsize=(4.2 * len(_STRESSORS), 3.6), squeeze=False)
    for axis, (stressor, xlabel, quality) in zip(axes[0], _STRESSORS, strict=True):
        rows = [r for r in study["rows"] if r["stressor"] == stressor]
        if not rows:
            axis.set_title(f"{stressor}: not measured")
            continue
        xs = np.array([r["level"] for r in rows], dtype=float)
        for band in study["bands"]:
            margins = np.array([_or_nan(r[band]["margin"]) for r in rows])
            intervals = np.array([r[band].get("margin_ci95") or (np.nan, np.nan) for r in rows], dtype=float)
            line = axis.plot(xs, margins, marker="o", label=f"{band} margin")[0]
            axis.fill_between(xs, intervals[:, 0], intervals[:, 1], color=line.get_color(), alpha=0.15)
        axis.axhline(0.0, color="black", lw=0.8, ls="--")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("median novel-PR margin to the floor (95 % CI)")
        twin = axis.twinx()
        twin.plot(xs, [r[quality] for r in rows], color="grey", marker="s", ls=":", label=quality)
        if quality == "accuracy":
            bounds = np.array([r["accuracy_ci95"] for r in rows], dtype=float)
            twin.fill_between(xs, bounds[:, 0], bounds[:, 1], color="grey", alpha=0.12)
            twin.set_ylim(-0.02, 1.02)
        twin.set_ylabel("task accuracy (95 % CI)" if quality == "accuracy" else "next-token loss (nats)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(study["model"])
    save(fig, folder / f"rank_stress_{study['model'].lower().replace('.', '-')}.png")

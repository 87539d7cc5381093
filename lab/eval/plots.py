"""PNG figures of metric trajectories for typical normal and sinking generations (matplotlib, headless)."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lab.eval.dataset import Generation
from lab.plotting import pyplot, save
from monitors.calibration import Calibration

__all__ = ["plot_trajectories"]

PANELS = ("entropy", "probe", "middle.cosine", "late.pr", "late.drift", "text.periodicity")


def _typical(generations: Sequence[Generation], kind: str, count: int) -> list[Generation]:
    """Up to ``count`` generations of a kind, spread over the corpus deterministically (longest first)."""
    chosen = sorted((g for g in generations if g.label.kind == kind), key=lambda g: (-g.length, g.entry.key))
    step = max(1, len(chosen) // max(count, 1))
    return chosen[::step][:count]


def plot_trajectories(generations: Sequence[Generation], calibration: Calibration, folder: Path) -> list[str]:
    """One figure per panel set: normal (grey), visible (red, onset marked), bland (blue) trajectories."""
    plt = pyplot()
    groups = {
        "negative": ("normal", "0.55", _typical(generations, "negative", 6)),
        "visible": ("visible sink", "tab:red", _typical(generations, "visible", 6)),
        "bland": ("bland sink", "tab:blue", _typical(generations, "bland", 4)),
    }
    thresholds = {s.name: s.threshold for s in calibration.signals if s.method == "ewma"}
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(9, 2.1 * len(PANELS)), sharex=True)
    for ax, name in zip(axes, PANELS, strict=True):
        for label, colour, gens in groups.values():
            for i, g in enumerate(gens):
                ax.plot(g.values(name), color=colour, lw=0.9, alpha=0.8, label=label if i == 0 else None)
                if g.label.onset is not None:
                    ax.axvline(g.label.onset, color=colour, lw=0.5, ls=":")
        if name in thresholds:
            ax.axhline(thresholds[name], color="k", lw=0.8, ls="--", label="threshold (EWMA)")
        ax.set_ylabel(name, fontsize=8)
    axes[0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1].set_xlabel("generated token (dotted: text detector fires)")
    fig.suptitle("Test-split trajectories: normal vs sinking generations", fontsize=10)
    return [str(save(fig, folder / "trajectories.png")), plot_onset_aligned(generations, folder)]


def plot_onset_aligned(generations: Sequence[Generation], folder: Path, before: int = 64, after: int = 16) -> str:
    """Median (and quartiles) of each panel signal around the text detector's onset, against normal traffic."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5))
    offsets = np.arange(-before, after)
    visible = [g for g in generations if g.label.kind == "visible"]
    negatives = [g for g in generations if not g.label.sink]
    for ax, name in zip(axes.ravel(), PANELS, strict=True):
        aligned = np.full((len(visible), len(offsets)), np.nan)
        for row, g in enumerate(visible):
            values = g.values(name)
            for col, offset in enumerate(offsets):
                t = g.label.onset + offset
                if 0 <= t < len(values):
                    aligned[row, col] = values[t]
        with np.errstate(all="ignore"):
            q1, q2, q3 = np.nanpercentile(aligned, [25, 50, 75], axis=0)
        ax.fill_between(offsets, q1, q3, color="tab:red", alpha=0.2)
        ax.plot(offsets, q2, color="tab:red", label="visible sinks (median, IQR)")
        normal = np.concatenate([g.values(name)[np.isfinite(g.values(name))] for g in negatives] or [np.zeros(1)])
        lo, mid, hi = np.percentile(normal, [25, 50, 75])
        ax.axhspan(lo, hi, color="0.6", alpha=0.25, label="normal (IQR)")
        ax.axhline(mid, color="0.4", lw=0.8)
        ax.axvline(0, color="k", lw=0.6, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("tokens from text-detector onset", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    return str(save(fig, folder / "onset_aligned.png"))

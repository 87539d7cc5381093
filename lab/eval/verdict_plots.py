"""Figures of ``sinkwatch eval verdicts`` and ``sinkwatch eval rescue --inducers`` (PNG, docs/figures/)."""

from pathlib import Path

import numpy as np

from lab.eval.verdicts_eval import PREVIOUS_NAME
from lab.plotting import pyplot, save

__all__ = ["plot_rescue", "plot_verdicts"]

OLD, SERVED = "text detector (4-gram share, the old rule)", "served (calibrated selection)"


def _bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> None:
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width, [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks(x + width * (len(series) - 1) / 2, groups, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def _plot_onsets(plt, detectors: dict, path: Path) -> Path:
    """Per held-out loop: where the detector fired against where the 4-gram rule fires (on the diagonal: as
    early; above: later); a loop never caught is drawn at its length, crossed."""
    figure, ax = plt.subplots(figsize=(6.5, 5))
    for name, colour in ((PREVIOUS_NAME, "tab:orange"), (SERVED, "tab:blue")):
        loops = [lp for lp in detectors[name]["test_loops"] if lp["text_detector"] is not None]
        caught = [lp for lp in loops if lp["fired"] is not None]
        missed = [lp for lp in loops if lp["fired"] is None]
        label = "served" if name == SERVED else "previous tracker (64 tokens, exact)"
        ax.scatter([lp["text_detector"] for lp in caught], [lp["fired"] for lp in caught], s=18, c=colour, label=label)
        ax.scatter([lp["text_detector"] for lp in missed], [lp["length"] for lp in missed], s=30, c=colour, marker="x")
    top = max(lp["length"] for lp in detectors[SERVED]["test_loops"])
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("4-gram rule fires at token")
    ax.set_ylabel("detector fires at token (x: never; drawn at the answer's length)")
    ax.set_title("Held-out loops: onset against the 4-gram rule", fontsize=10)
    ax.legend(fontsize=8)
    return save(figure, path)


def plot_verdicts(result: dict, folder: Path) -> list[str]:
    """False alarms per 1,000 healthy tokens and recall, per traffic type and length (held-out split), for
    the old 4-gram rule and the served detector; the risk model's reliability and block_at trade-off."""
    plt = pyplot()
    detectors = result["detectors"]
    written = []
    for axis, name in (("traffic", "verdicts_traffic.png"), ("length", "verdicts_length.png")):
        groups = sorted(detectors[SERVED]["test"][axis])
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        stats = {d: [detectors[d]["test"][axis][g] for g in groups] for d in (OLD, PREVIOUS_NAME, SERVED)}
        _bars(
            left,
            groups,
            {d: [s["false_alarms_per_1k_tokens"] for s in rows] for d, rows in stats.items()},
            "false alarms per 1,000 healthy tokens",
            f"Held-out false alarms per {axis} (target ≤ 0.05)",
        )
        left.axhline(0.05, color="black", lw=0.8, ls="--")
        _bars(
            right,
            groups,
            {d: [s["recall"] for s in rows] for d, rows in stats.items()},
            "share of visible loops caught",
            f"Held-out recall per {axis} (target ≥ 0.95)",
        )
        right.axhline(0.95, color="black", lw=0.8, ls="--")
        written.append(str(save(figure, folder / name)))
    written.append(str(_plot_onsets(plt, detectors, folder / "verdicts_onset.png")))
    risk = result["risk"]["test"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bins = risk["reliability"]
    left.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    left.scatter(
        [b["mean_predicted"] for b in bins],
        [b["observed_sinking"] for b in bins],
        s=[8 * b["generations"] for b in bins],
    )
    left.set_xlabel("predicted risk (bin mean)")
    left.set_ylabel("observed share sinking")
    left.set_title("stability.risk reliability, held-out (area: generations)", fontsize=10)
    levels = sorted(risk["block_at"], key=float)
    fa = [risk["block_at"][lv]["false_alarms_per_1k_tokens"] for lv in levels]
    recall = [risk["block_at"][lv]["recall"] for lv in levels]
    right.plot(fa, recall, marker="o")
    for lv, x, y in zip(levels, fa, recall, strict=True):
        right.annotate(f"block_at {lv}", (x, y), fontsize=7)
    right.set_xlabel("false alarms per 1,000 healthy tokens")
    right.set_ylabel("loops caught")
    right.set_title("Acting at block_at: the trade-off (held-out)", fontsize=10)
    written.append(str(save(figure, folder / "verdicts_risk.png")))
    return written


def plot_rescue(per_inducer: dict, per_kind: dict, folder: Path) -> str:
    """Rescue per loop inducer and per traffic type: share passing the automatic check, and share healthy
    by hand label (of the cases the detector fired on; the case counts in brackets)."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, summaries, what in ((axes[0], per_inducer, "loop inducer"), (axes[1], per_kind, "traffic type")):
        names = sorted(summaries)
        _bars(
            ax,
            [f"{n.split('/')[-1]} ({summaries[n]['cases']})" for n in names],
            {
                "automatic check": [summaries[n].get("success_rate") for n in names],
                "healthy by hand label": [summaries[n]["hand_labels"]["rate"] for n in names],
            },
            "share of cases",
            f"Rescue per {what}, held-out prompts (target ≥ 0.9)",
        )
        ax.axhline(0.9, color="black", lw=0.8, ls="--")
        ax.set_ylim(0, 1.05)
    return str(save(figure, folder / "rescue_inducers.png"))

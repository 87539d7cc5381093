"""Figure of ``sinkwatch eval prefill``: ROC curves of the prefill risk's parts on the held-out split."""

from pathlib import Path

import numpy as np

from lab.plotting import pyplot, save

__all__ = ["plot_prefill"]


def _roc(scores: list[float], loops: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-np.asarray(scores), kind="stable")
    y = np.asarray(loops, dtype=bool)[order]
    tpr = np.concatenate([[0.0], np.cumsum(y) / max(1, y.sum())])
    fpr = np.concatenate([[0.0], np.cumsum(~y) / max(1, (~y).sum())])
    return fpr, tpr


def plot_prefill(result: dict, folder: Path) -> list[str]:
    """ROC of the prompt probe, the sampling prior and their combination (test split, all generated answers)."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(5, 4.5))
    aurocs = result["auroc"]["test"]["all"]
    for part, data in result["roc"].items():
        fpr, tpr = _roc(data["scores"], data["loops"])
        ax.plot(fpr, tpr, label=f"{part} (AUROC {aurocs[part]['auroc']})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    ax.set_xlabel("healthy answers flagged")
    ax.set_ylabel("loops flagged")
    ax.set_title("Prefill risk, held-out prompts", fontsize=10)
    ax.legend(fontsize=8)
    return [str(save(figure, folder / "prefill_roc.png"))]

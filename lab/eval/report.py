"""Render the evaluation results (``docs/evaluation/*.json``) as the Markdown tables of docs/EVALUATION.md."""

import argparse
import json
from pathlib import Path

__all__ = ["add_arguments", "run"]

SIGNAL_COLUMNS = (
    ("auroc_visible", "AUROC visible"),
    ("auroc_bland", "AUROC bland"),
    ("auroc_early64", "early AUROC @64"),
    ("auroc_length_matched", "length-matched AUROC"),
    ("fpr_at_recall90", "FPR @90% recall"),
    ("fpr", "online FPR"),
    ("recall_visible", "recall visible"),
    ("recall_bland", "recall bland"),
    ("median_lead_vs_text_detector", "lead vs text det."),
    ("median_lead_vs_best_baseline", "lead vs best baseline"),
)
ONLINE_COLUMNS = (*SIGNAL_COLUMNS[5:], ("share_before_text_detector", "share earlier than text det."))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval report``."""
    parser.add_argument("--folder", type=Path, default=Path("docs/evaluation"))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def detect_tables(result: dict) -> str:
    """Per-signal table, combined detector and ablations, cross-validation."""
    signals = {k: v for k, v in result["signals"].items() if "skipped" not in v}
    order = sorted(signals, key=lambda n: -(signals[n].get("auroc_visible") or 0))
    per_signal = _table(
        ["signal", "side", *[label for _, label in SIGNAL_COLUMNS]],
        [[name, signals[name]["direction"], *[signals[name].get(k) for k, _ in SIGNAL_COLUMNS]] for name in order],
    )
    detectors = {"combined (served)": result["combined"], **result.get("ablations", {})}
    combined = _table(
        ["detector", "signals", *[label for _, label in ONLINE_COLUMNS]],
        [[name, ", ".join(d["signals"]), *[d.get(k) for k, _ in ONLINE_COLUMNS]] for name, d in detectors.items()],
    )
    parts = [f"Best text baseline (chosen on tune): `{result['best_baseline']}`", per_signal, combined]
    if "cross_validation" in result:
        cv = result["cross_validation"]
        parts.append(_table(["metric", "mean", "std"], [[k, v["mean"], v["std"]] for k, v in cv.items()]))
    return "\n\n".join(parts)


def scale_table(rows: list[dict]) -> str:
    """One row per coarse-graining setting."""
    names = ("probe", "late.pr", "middle.cosine", "late.drift", "path")
    header = ["axis", "value", "layers"] + [f"{n} AUROC / early64" for n in names] + ["combined recall", "FPR", "lead"]
    body = []
    for row in rows:
        cells = [row["axis"], row["value"], row["layers"]]
        for name in names:
            quality = row.get(name, {})
            cells.append(f"{_cell(quality.get('auroc_visible'))} / {_cell(quality.get('auroc_early64'))}")
        combined = row["combined"]
        cells += [combined["recall_visible"], combined["fpr"], combined["median_lead_vs_text_detector"]]
        body.append(cells)
    return _table(header, body)


def run(args: argparse.Namespace) -> None:
    """Print the tables of whatever results exist."""
    detect = args.folder / "detect.json"
    scale = args.folder / "scale.json"
    if detect.is_file():
        print(detect_tables(json.loads(detect.read_text())))
    if scale.is_file():
        print("\n" + scale_table(json.loads(scale.read_text())))

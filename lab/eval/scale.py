"""What coarse-graining the capture costs: detection quality vs layers kept, token stride and projected width.

Each setting is calibrated on the tune split as it would be in production (mean states, probe and
thresholds refitted on what that setting observes), then measured on the test split: generation-level
AUROC of visible sinks, early-warning AUROC (first 64 tokens, sinks not yet visible), bland-sink AUROC
for the main hidden-state signals, and the combined detector's recall and lead at the calibrated FPR.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from lab.eval import calibrate
from lab.eval.corpus import state_shape
from lab.eval.dataset import build_generations, labelled_entries
from lab.eval.detect_eval import combined, separation, single_signal_spec
from lab.eval.signals import Sampling
from monitors.bands import LayerBand, default_bands

__all__ = ["add_arguments", "run"]

KEY_SIGNALS = ("probe", "late.pr", "middle.cosine", "late.drift", "path")


@dataclass(frozen=True)
class Setting:
    """One coarse-graining: a name for the report and how the monitor samples."""

    axis: str
    value: int
    sampling: Sampling
    probe_layers: str


def settings(num_layers: int, window: int) -> list[Setting]:
    """Layers per band 1/2/all, token stride 1/2/8, projected width d/128/32."""
    out = []
    for per_band in (1, 2, None):
        bands = default_bands(num_layers, per_band) if per_band else _all_layer_bands(num_layers)
        out.append(Setting("layers_per_band", per_band or 0, Sampling(bands, window=window), _probe_layers(bands)))
    base = default_bands(num_layers)
    for stride in (2, 8):
        out.append(Setting("token_stride", stride, Sampling(base, stride=stride, window=window), _probe_layers(base)))
    for projection in (128, 32):
        sampling = Sampling(base, projection=projection, window=window)
        out.append(Setting("projected_width", projection, sampling, _probe_layers(base)))
    return out


def _all_layer_bands(num_layers: int) -> tuple[LayerBand, ...]:
    thirds = [round(i * num_layers / 3) for i in range(4)]
    names = ("early", "middle", "late")
    return tuple(LayerBand(n, tuple(range(max(a, 1), b))) for n, a, b in zip(names, thirds, thirds[1:], strict=False))


def _probe_layers(bands: tuple[LayerBand, ...]) -> str:
    """The probe reads the middle band's layers (at most two, those nearest its centre)."""
    layers = bands[1].layers
    centre = (layers[0] + layers[-1]) / 2
    return ",".join(str(x) for x in sorted(sorted(layers, key=lambda x: abs(x - centre))[:2]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval scale``."""
    calibrate.add_arguments(parser)
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/scale.json"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument("--only", default="", help="comma-separated axes to run (default: all)")


def run(args: argparse.Namespace) -> dict:
    """Evaluate every setting; write JSON and a figure."""
    entries = labelled_entries(args.corpus)
    tune_entries = [(e, lab) for e, lab in entries if e.split == "tune"]
    test_entries = [(e, lab) for e, lab in entries if e.split == "test"]
    num_layers, _ = state_shape(args.corpus)
    rows = []
    for setting in settings(num_layers, args.window):
        if args.only and setting.axis not in args.only.split(","):
            continue
        args.probe_layers = setting.probe_layers
        calibration, tune, reference = calibrate.calibrate_on(args, tune_entries, sampling=setting.sampling)
        test = build_generations(test_entries, args.corpus, setting.sampling, reference, offline=False)
        row = {
            "axis": setting.axis,
            "value": setting.value,
            "layers": len({x for b in setting.sampling.bands for x in b.layers}),
        }
        for name in KEY_SIGNALS:
            if any(name in g.trajectories for g in tune):
                quality = separation(single_signal_spec(name, tune, args), test, args)
                row[name] = {k: quality[k] for k in ("auroc_visible", "auroc_bland", "auroc_early64")}
        row["combined"] = combined(calibration, test).stats(test)
        rows.append(row)
        print(f"eval scale: {json.dumps(row, default=float)}", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=1, default=float))
    _plot(rows, args.figures)
    return {"settings": rows}


def _plot(rows: list[dict], folder: Path) -> None:
    from lab.plotting import pyplot, save

    plt = pyplot()
    axes_names = ("layers_per_band", "token_stride", "projected_width")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, axis in zip(axes, axes_names, strict=True):
        chosen = [r for r in rows if r["axis"] == axis]
        if axis != "layers_per_band":
            chosen = [r for r in rows if r["axis"] == "layers_per_band" and r["value"] == 2] + chosen
        xs = [_tick(r, axis) for r in chosen]
        for name in ("probe", "late.pr", "middle.cosine"):
            ax.plot(
                xs,
                [r.get(name, {}).get("auroc_visible", float("nan")) for r in chosen],
                marker="o",
                label=f"{name} AUROC",
            )
            ax.plot(
                xs,
                [r.get(name, {}).get("auroc_early64", float("nan")) for r in chosen],
                marker="x",
                ls=":",
                label=f"{name} early64",
            )
        ax.plot(xs, [r["combined"]["recall_visible"] for r in chosen], marker="s", color="k", label="combined recall")
        ax.set_title(axis)
        ax.set_ylim(0.3, 1.02)
    axes[0].legend(fontsize=6)
    save(fig, folder / "scale_loss.png")


def _tick(row: dict, axis: str) -> str:
    """Axis label of a setting: its value, 'all' for every layer, 'base' for the default capture."""
    if row["axis"] != axis:
        return "base"
    return "all" if row["value"] == 0 else str(row["value"])

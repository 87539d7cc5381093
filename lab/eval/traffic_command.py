"""``sinkwatch calibrate --from-traffic DIR [-o FILE]``: read the recording, fit, print the check, write."""

import argparse
import json
from typing import Any

from lab.eval.traffic import read_recording, recorded_uncalibrated, recording_setup
from lab.eval.traffic_defaults import default_base, plugin_bands, profile_mean_states
from lab.eval.traffic_fit import TrafficFitOptions, fit_from_traffic
from monitors.calibration import Calibration, load_calibration

__all__ = ["run_from_traffic"]


def _base(named: Calibration | None, model: str, setup: dict[str, Any]) -> Calibration:
    """``--base`` (loaded); else, for a recording made uncalibrated, the default signals on the recorded setup
    and the model's derived profile; else the calibration shipped for the recorded model."""
    if named is not None:
        return named
    if recorded_uncalibrated(setup):
        print(f"calibrate: {model} was recorded uncalibrated: default signals on its own profile")
        # No outlier dimensions at all: recorded behind the vLLM plugin, which derives no reference (bands only).
        derived = bool(setup.get("outlier_dims"))
        return default_base(model, setup, profile_mean_states(model, setup) if derived else {})
    return load_calibration(model)


def run_from_traffic(args: argparse.Namespace) -> Calibration:
    """Fit the recording at ``args.from_traffic`` on its base calibration; write it to ``--output``."""
    if args.output is None:
        raise ValueError("calibrate --from-traffic needs -o FILE (the shipped calibration is not overwritten)")
    if not 0 <= args.held_out < 1:
        raise ValueError(f"--held-out must be in [0, 1), not {args.held_out}")
    named = load_calibration(args.base) if args.base is not None else None
    # Under a named base, only what was recorded with it in force (a record dir kept across a reload holds more).
    generations, left_out = read_recording(args.from_traffic, setup=recording_setup(named) if named else None)
    model = generations[0].model
    if recorded_uncalibrated(generations[0].setup) and not generations[0].setup.get("bands"):
        # Behind the vLLM plugin, uncalibrated: the gateway could not see the bands the plugin captured.
        bands = plugin_bands(model)
        print(f"calibrate: the recording names no bands: those the vLLM plugin captures on {model}, {bands}")
        for generation in generations:
            generation.setup = {**generation.setup, "bands": bands}
    base = _base(named, model, generations[0].setup)
    print(
        f"calibrate: {len(generations)} recorded generations of {model} in {args.from_traffic} (left out: {left_out})"
    )
    options = TrafficFitOptions(args.target_fpr, args.rank_fpr, args.held_out, fit_levels=args.rank_levels)
    fitted = fit_from_traffic(generations, base, options)
    fitted.report["recording_left_out"] = left_out
    report = fitted.report
    signals = [f"{s.name}/{s.method}" for s in fitted.calibration.signals]
    print(f"calibrate: base {base.model}@{base.created}; signals {signals}")
    print(
        f"calibrate: fitted on {report['fit_generations']} generations ({report['fit_visible_loops_dropped']} visible "
        f"loops dropped, {report['fit_tokens']} tokens): {report['fit_rate']} false alarms per 1,000 tokens "
        f"(target {args.target_fpr})"
    )
    print(
        f"calibrate: held out (the latest {args.held_out:.0%}): {report['held_out_generations']} generations, "
        f"{report['held_out_rate']} false alarms per 1,000 tokens on {report['held_out_tokens']} tokens not "
        f"visibly looping; {report['held_out_loops_caught']}/{report['held_out_visible_loops']} visible loops caught"
    )
    finest = 1000.0 / max(report["fit_tokens"], 1)
    if args.target_fpr < finest:
        print(
            f"calibrate: note: {report['fit_tokens']} fitted tokens cannot resolve {args.target_fpr} alarms per 1,000 "
            f"(one alarm is {finest:.3f}): the thresholds sit at the highest healthy values seen, and later traffic "
            "passes them more often than the target; record more (docs/EVALUATION.md, Calibrating from traffic)"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(fitted.calibration.to_json())
    print(f"calibrate: wrote {args.output}")
    print(f"calibrate: rank floors: {report['rank_floors']}")
    if fitted.calibration.rank_floors and report["held_out_rank_share_ci95"] is not None:
        fired, healthy = report["held_out_rank_fired"]
        low, high = report["held_out_rank_share_ci95"]
        print(
            f"calibrate: held out below a rank floor: {fired} of {healthy} generations not visibly looping "
            f"(95 % CI {low:.1%}-{high:.1%}; target {args.rank_fpr:.0%}); by sampling "
            f"{report['held_out_rank_by_sampling']} [fired, generations]"
        )
    print(json.dumps({"thresholds": {s.name: round(s.threshold, 4) for s in fitted.calibration.signals}}))
    return fitted.calibration

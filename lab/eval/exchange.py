"""The alignment exchange rate: what each added system-prompt constraint costs in dimensionality and sinks.

For a fixed set of user prompts, system prompts with the first ``n`` constraints of
``monitors/data/constraints.json`` are generated through the embedded engine (seeded, same sampling for
every ``n``), teacher-forced for states at the calibrated bands, and replayed through the served
extractor and detector. Reported per ``n``: mean participation ratio per band, next-token entropy, the
probe score, the text detector's sink rate and the combined detector's firing rate. The exchange rate is
the slope of PR against ``n``; a critical point would show as a jump in sink rate.
"""

import argparse
import json
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from gateway.engine.provision import DEFAULT_MODEL, cache_root, served_name
from gateway.generation import SamplingParams
from lab.eval.prompts import load_prompts
from lab.eval.runner import GenerationJob
from monitors.calibration import Calibration, load_calibration
from monitors.detector import StabilityDetector, usable_values
from monitors.features import FeatureExtractor
from monitors.text import text_sink_onset

__all__ = ["add_arguments", "constraints", "run"]


def constraints() -> list[str]:
    """The constraints, in the order they are added."""
    path = resources.files("monitors") / "data" / "constraints.json"
    return json.loads(path.read_text())["constraints"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval exchange``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=12, help="user prompts (from the normal set)")
    parser.add_argument("--levels", default="0,1,2,4,6,8,12", help="numbers of constraints to try")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/exchange.json"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))


def _jobs(args: argparse.Namespace) -> list[tuple[int, GenerationJob]]:
    cases = load_prompts("normal")[: args.prompts]
    rules = constraints()
    jobs = []
    for n in (int(x) for x in args.levels.split(",")):
        system = " ".join(rules[:n]) if n else "You are a helpful assistant."
        for case in cases:
            user = next(m for m in case.messages if m["role"] == "user")
            sampling = SamplingParams(
                max_tokens=args.max_tokens, temperature=args.temperature, top_p=0.95, seed=zlib.crc32(case.id.encode())
            )
            messages = ({"role": "system", "content": system}, user)
            jobs.append((n, GenerationJob(f"{case.id}@c{n}", messages, sampling)))
    return jobs


def _cache_dir(args: argparse.Namespace) -> Path:
    return cache_root() / "eval" / "exchange" / f"t{args.temperature}-m{args.max_tokens}"


def _generate(args: argparse.Namespace, bands) -> None:
    """Generate and teacher-force the generations not cached yet (token ids, states, entropy per key)."""
    from gateway.engine.engine import EmbeddedEngine
    from gateway.engine.engine_config import EngineConfig
    from gateway.engine.loader import load_model
    from gateway.engine.provision import provision
    from lab.eval.runner import generate_all, teacher_forced_states

    folder = _cache_dir(args)
    jobs = [(n, job) for n, job in _jobs(args) if not (folder / f"{job.key}.npz").is_file()]
    if not jobs:
        return
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_model(provision(args.model), served_name(args.model))
    layers = FeatureExtractor(bands).layers
    engine = EmbeddedEngine(loaded, EngineConfig(max_batch=args.max_batch, capture=False), bands)
    engine.start()
    try:
        records = generate_all(engine, [job for _, job in jobs])
    finally:
        engine.shutdown()
    for record in records:
        if record.output_ids:
            states = teacher_forced_states(loaded, record, layers)
            np.savez(
                folder / f"{record.key}.npz",
                token_ids=np.array(record.output_ids),
                states=states.states.astype(np.float16),
                entropy=states.entropy,
                layers=np.array(layers),
            )


def _statistics(path: Path, calibration: Calibration) -> dict:
    """Per-generation means of the served features, the text detector and the combined detector."""
    with np.load(path) as data:
        token_ids, states, entropy, layers = (data[k] for k in ("token_ids", "states", "entropy", "layers"))
    extractor = FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
    rows = [list(layers).index(layer) for layer in extractor.layers]
    detector = StabilityDetector(calibration)
    sums: dict[str, list[float]] = {}
    fired = None
    for t, token in enumerate(token_ids.tolist()):
        step = extractor.push(states[t, rows].astype(np.float64), float(entropy[t]), token)
        if detector.update(step).fired and fired is None:
            fired = t
        for name, value in usable_values(step, calibration.window).items():
            sums.setdefault(name, []).append(value)
    return {
        "tokens": len(token_ids),
        "text_sink": text_sink_onset(token_ids.tolist()) is not None,
        "detector_fired": fired is not None,
        "means": {name: float(np.mean(v)) for name, v in sums.items()},
    }


def run(args: argparse.Namespace) -> dict:
    """Generate, summarise per number of constraints, fit the exchange rate, plot."""
    calibration = load_calibration(served_name(args.model))
    _generate(args, calibration.bands)
    rows = [
        {"constraints": n, **_statistics(_cache_dir(args) / f"{job.key}.npz", calibration)}
        for n, job in _jobs(args)
        if (_cache_dir(args) / f"{job.key}.npz").is_file()
    ]
    levels = sorted({row["constraints"] for row in rows})
    summary = []
    for n in levels:
        group = [row for row in rows if row["constraints"] == n]
        entry = {
            "constraints": n,
            "generations": len(group),
            "tokens_mean": float(np.mean([r["tokens"] for r in group])),
            "text_sink_rate": float(np.mean([r["text_sink"] for r in group])),
            "detector_rate": float(np.mean([r["detector_fired"] for r in group])),
        }
        for name in ["entropy", "probe"] + [f"{b.name}.pr" for b in calibration.bands]:
            values = [r["means"][name] for r in group if name in r["means"]]
            entry[name] = float(np.mean(values)) if values else float("nan")
        summary.append(entry)
    slopes = {}
    for name in [f"{b.name}.pr" for b in calibration.bands] + ["entropy", "probe"]:
        xs = np.array([s["constraints"] for s in summary], dtype=float)
        ys = np.array([s[name] for s in summary])
        ok = np.isfinite(ys)
        slopes[name] = float(np.polyfit(xs[ok], ys[ok], 1)[0]) if ok.sum() >= 2 else float("nan")
    result = {"levels": summary, "slope_per_constraint": slopes}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1))
    _plot(summary, calibration, args.figures)
    print(json.dumps(result, indent=1))
    return result


def _plot(summary: list[dict], calibration: Calibration, folder: Path) -> None:
    from lab.plotting import pyplot, save

    plt = pyplot()
    xs = [s["constraints"] for s in summary]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for band in calibration.bands:
        left.plot(xs, [s[f"{band.name}.pr"] for s in summary], marker="o", label=f"{band.name} PR")
    left.set_xlabel("system-prompt constraints")
    left.set_ylabel("mean participation ratio (32-token window)")
    left.legend(fontsize=8)
    right.plot(xs, [s["text_sink_rate"] for s in summary], marker="o", label="text detector sink rate")
    right.plot(xs, [s["detector_rate"] for s in summary], marker="s", label="combined detector rate")
    right.set_xlabel("system-prompt constraints")
    right.set_ylim(-0.02, 1.02)
    right.legend(fontsize=8)
    save(fig, folder / "exchange_rate.png")

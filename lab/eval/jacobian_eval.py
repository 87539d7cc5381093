"""Cost and accuracy of the budgeted Jacobian stress estimate vs the exact
Jacobian, and whether stress separates sinking from normal generations (on sampled tokens, test split).

For each sampled generation one token is probed: for a visible sink, ``--before`` tokens before the text
detector's onset; for a negative, the same relative position. Jacobians are of the block of layers
``[--start, --stop)``.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from gateway.engine.provision import DEFAULT_MODEL, served_name
from lab.eval.corpus import CORPUS_VERSION
from lab.eval.dataset import labelled_entries
from lab.eval.scoring import auroc
from monitors.jacobian import decoder_block, estimate_stress, exact_jacobian, exact_stress

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval jacobian``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--corpus", default=CORPUS_VERSION)
    parser.add_argument("--start", type=int, default=13)
    parser.add_argument("--stop", type=int, default=17)
    parser.add_argument("--samples", type=int, default=20, help="generations per class")
    parser.add_argument("--before", type=int, default=16, help="tokens before the sink onset to probe")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/jacobian.json"))


def run(args: argparse.Namespace) -> dict:
    """Probe sampled tokens exactly and with the budget; report cost, error and separation."""
    from gateway.engine.loader import load_model
    from gateway.engine.provision import provision

    loaded = load_model(provision(args.model), served_name(args.model))
    test = [(e, lab) for e, lab in labelled_entries(args.corpus) if e.split == "test"]
    sinks = [(e, lab) for e, lab in test if lab.kind == "visible" and lab.onset > args.before + 8][: args.samples]
    negatives = [(e, lab) for e, lab in test if not lab.sink and len(e.output_ids) > 48][: args.samples]
    rows = []
    for entry, label in sinks + negatives:
        offset = label.onset - args.before if label.sink else len(entry.output_ids) // 2
        position = len(entry.prompt_ids) - 1 + offset
        ids = entry.prompt_ids + entry.output_ids
        block, h = decoder_block(loaded.model, ids, position, args.start, args.stop)
        started = time.perf_counter()
        exact, kappa = exact_stress(exact_jacobian(block, h))
        exact_seconds = time.perf_counter() - started
        started = time.perf_counter()
        estimate = estimate_stress(block, h, args.iterations, args.probes)
        estimate_seconds = time.perf_counter() - started
        rows.append(
            {
                "key": entry.key,
                "sink": label.sink,
                "exact_stress": exact.stress,
                "exact_sigma_max": exact.sigma_max,
                "condition_number": kappa,
                "estimated_stress": estimate.stress,
                "estimated_sigma_max": estimate.sigma_max,
                "exact_seconds": exact_seconds,
                "estimate_seconds": estimate_seconds,
            }
        )
        print(f"eval jacobian: {json.dumps(rows[-1])}", flush=True)
    result = _summary(rows, args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"summary": result, "samples": rows}, indent=1))
    print(json.dumps(result, indent=1))
    return result


def _summary(rows: list[dict], args: argparse.Namespace) -> dict:
    def column(name, sink=None):
        return np.array([r[name] for r in rows if sink is None or r["sink"] == sink])

    relative = np.abs(column("estimated_stress") - column("exact_stress")) / column("exact_stress")
    sigma_error = np.abs(column("estimated_sigma_max") - column("exact_sigma_max")) / column("exact_sigma_max")
    return {
        "block": [args.start, args.stop],
        "threads": torch.get_num_threads(),
        "exact_seconds_median": float(np.median(column("exact_seconds"))),
        "estimate_seconds_median": float(np.median(column("estimate_seconds"))),
        "stress_relative_error_median": float(np.median(relative)),
        "sigma_max_relative_error_median": float(np.median(sigma_error)),
        "stress_rank_correlation": float(
            np.corrcoef(
                np.argsort(np.argsort(column("exact_stress"))), np.argsort(np.argsort(column("estimated_stress")))
            )[0, 1]
        ),
        "auroc_exact_stress": auroc(column("exact_stress", True), column("exact_stress", False)),
        "auroc_estimated_stress": auroc(column("estimated_stress", True), column("estimated_stress", False)),
        "auroc_log_condition_number": auroc(
            np.log(column("condition_number", True)), np.log(column("condition_number", False))
        ),
        "samples": {"sink": int(sum(r["sink"] for r in rows)), "negative": int(sum(not r["sink"] for r in rows))},
    }

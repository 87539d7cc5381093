"""The rank-exhaustion corpus study on a miniature corpus: loops are told from healthy generations by their
text, their novel PR is undefined, and floors come from the healthy ones only."""

import json
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

import numpy as np

from lab.eval.rank_corpus import band_lows, corpus_tracks, fit_levels, read_items
from lab.eval.rank_eval import corpus_study
from monitors.bands import LayerBand
from monitors.calibration import load_calibration
from monitors.rank_exhaustion import fit_rank_floors

LAYERS, WIDTH, TOKENS = 3, 48, 80
BANDS = (LayerBand("late", (1, 2)),)


def _write(root: Path, key: str, split: str, prompt_set: str, ids: list[int], states: np.ndarray) -> None:
    (root / "arrays").mkdir(parents=True, exist_ok=True)
    np.savez(root / "arrays" / f"{key}.npz", states=states.astype(np.float16), entropy=np.ones(len(ids)))
    row = {"key": key, "split": split, "prompt_set": prompt_set, "output_ids": ids, "text": "ignored"}
    with (root / "manifest.jsonl").open("a") as manifest:
        manifest.write(json.dumps(row) + "\n")


def _corpus(root: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(6):
        ids = [int(x) for x in rng.integers(100, 5000, TOKENS)]
        _write(root, f"healthy-{i}", "tune", "production", ids, rng.standard_normal((TOKENS, LAYERS, WIDTH)))
    cycle = rng.standard_normal((4, LAYERS, WIDTH))
    loop = np.stack([cycle[t % 4] + 0.01 * rng.standard_normal((LAYERS, WIDTH)) for t in range(TOKENS)])
    _write(root, "loop-0", "tune", "induce", [11, 12, 13, 14] * (TOKENS // 4), loop)


def test_loops_have_no_novel_pr_and_floors_come_from_healthy_generations(tmp_path):
    _corpus(tmp_path)
    calibration = load_calibration("SmolLM2-135M-Instruct")
    calibration = replace(calibration, bands=BANDS, window=32)
    items = read_items(str(tmp_path))
    assert [item.loops for item in items] == [False] * 6 + [True]
    levels = fit_levels([i for i in items if not i.loops], calibration, 0.5)
    assert set(levels) == {1, 2}
    tracks = corpus_tracks(items, calibration, levels, lambda item: not item.loops)
    loop = next(t for t in tracks if t.item.key == "loop-0")
    assert not loop.healthy
    assert not np.isfinite(loop.values["late.pr_novel"]).any()
    assert np.nanmin(loop.values["late.pr"]) < 4.0
    assert band_lows(loop, ["late"], 8, 4) == {}
    healthy_lows = [band_lows(t, ["late"], 8, 4)["late"] for t in tracks if t.healthy]
    floors = fit_rank_floors([{"late": low} for low in healthy_lows], 0.05)
    assert min(healthy_lows) <= floors["late"] <= max(healthy_lows)


def test_the_corpus_study_chooses_persistence_by_prompt_folds_and_reads_the_rate_on_the_test_split(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("SINKWATCH_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    for i in range(16):
        ids = [int(x) for x in rng.integers(100, 5000, TOKENS)]
        split = "tune" if i < 10 else "test"
        states = rng.standard_normal((TOKENS, LAYERS, WIDTH))
        _write(tmp_path / "corpus", f"p{i}@t0.7", split, "production", ids, states)
    cycle = rng.standard_normal((4, LAYERS, WIDTH))
    loop = np.stack([cycle[t % 4] + 0.01 * rng.standard_normal((LAYERS, WIDTH)) for t in range(TOKENS)])
    _write(tmp_path / "corpus", "loop-0@greedy", "test", "induce", [11, 12, 13, 14] * (TOKENS // 4), loop)
    calibration = replace(load_calibration("SmolLM2-135M-Instruct"), bands=BANDS, window=32)
    args = Namespace(
        corpus=str(tmp_path / "corpus"),
        stress_sets="induce",
        human_sets="human",
        quantile=0.5,
        persistences="2,4",
        fit_rates="0.05,0.0",
        fpr=0.05,
        levels_from=None,
    )
    study = corpus_study(args, calibration)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 17  # every replay kept: a rerun replays nothing
    assert corpus_study(args, calibration)["floors"] == study["floors"]
    assert len(study["cross_validation"]) == 4
    assert all(row["generations"] == 10 for row in study["cross_validation"])
    chosen = next(
        r
        for r in study["cross_validation"]
        if (r["persistence"], r["fit_rate"]) == (study["persistence"], study["fit_rate"])
    )
    assert chosen["rate"] <= 0.05 or min(r["rate"] for r in study["cross_validation"]) > 0.05
    assert set(study["floors"]) == {"late"}
    assert study["held_out"]["all"]["generations"] == 6
    assert study["held_out"]["traffic"] == {"production": study["held_out"]["all"]}
    assert study["groups"]["induced_loops"]["generations"] == 1
    assert study["groups"]["induced_loops"]["novel_pr_fire_rate"] == 0.0
    assert study["groups"]["induced_loops"]["plain_pr_fire_rate"] == 1.0

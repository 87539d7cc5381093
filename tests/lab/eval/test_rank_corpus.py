"""The rank-exhaustion corpus study on a miniature corpus: loops are told from healthy generations by their
text, their novel PR is undefined, and floors come from the healthy ones only."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from lab.eval.rank_corpus import band_lows, corpus_tracks, fit_levels, read_items
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

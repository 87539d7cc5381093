"""A miniature evaluation, end to end on the real model: corpus, calibration, held-out measurement."""

import argparse
import json

import pytest

from lab.eval import calibrate, detect_eval, periodicity_eval
from lab.eval.corpus import build_corpus, read_manifest
from lab.eval.dataset import labelled_entries
from monitors.calibration import load_calibration
from monitors.text import MAX_PERIOD, PERIOD_JITTER, PERIODICITY_WINDOW

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def mini_corpus(loaded_model, tmp_path_factory) -> str:
    name = str(tmp_path_factory.mktemp("eval") / "mini")
    build_corpus(loaded_model, max_tokens=32, max_batch=16, name=name, prompts_per_set=2)
    return name


def _args(corpus: str, tmp_path, **extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    detect_eval.add_arguments(parser)
    flags = f"--corpus {corpus} --window 8 --max-tokens 32 --probe-layers 13 --prompts-per-set 2 --probe-folds 2"
    args = parser.parse_args(flags.split())
    args.output = tmp_path / "calibration.json"
    args.results = tmp_path / "results.json"
    args.figures = tmp_path / "figures"
    args.folds = 0
    vars(args).update(extra)
    return args


def test_the_corpus_holds_every_generation_with_its_states(mini_corpus):
    entries = read_manifest(mini_corpus)
    assert len(entries) == 2 * (3 + 3 + 2)
    assert {e.split for e in entries} == {"tune", "test"}
    assert all(e.output_ids for e in entries)


def test_calibrate_writes_a_calibration_the_detector_loads(mini_corpus, tmp_path):
    args = _args(mini_corpus, tmp_path)
    calibration = calibrate.run(args)
    again = load_calibration(args.output)
    assert again.signals == calibration.signals
    assert again.window == 8
    assert 0.0 <= again.notes["tune_fpr"] <= args.target_fpr


def test_eval_detect_measures_on_the_test_split_only(mini_corpus, tmp_path):
    args = _args(mini_corpus, tmp_path)
    result = detect_eval.run(args)
    written = json.loads(args.results.read_text())
    test_keys = {e.key for e, _ in labelled_entries(mini_corpus) if e.split == "test"}
    assert sum(written["counts"]["test"].values()) == len(test_keys)
    assert {"combined", "signals", "ablations", "best_baseline"} <= set(result)
    assert 0.0 <= written["combined"]["fpr"] <= 1.0
    assert "text.zlib" in written["signals"] and "entropy" in written["signals"]
    assert (args.figures / "trajectories.png").is_file()


def test_eval_periodicity_compares_tracker_options_on_tune_only(mini_corpus, tmp_path):
    parser = argparse.ArgumentParser()
    periodicity_eval.add_arguments(parser)
    flags = f"--corpus {mini_corpus} --window 8 --probe-layers 13 --probe-folds 2 --max-periods 8,64 --jitters 0,1"
    args = parser.parse_args([*flags.split(), "--windows", "16", "--results", str(tmp_path / "periodicity.json")])
    written = periodicity_eval.run(args)
    assert json.loads(args.results.read_text()) == written
    served = {"max_period": MAX_PERIOD, "jitter": PERIOD_JITTER, "window": PERIODICITY_WINDOW}
    assert written["served"]["variant"] == served == written["variants"][0]["variant"]
    assert [v["variant"]["max_period"] for v in written["variants"][1:]] == [8, 8, 64, 64]
    tune = [e for e, label in labelled_entries(mini_corpus) if e.split == "tune"]
    for variant in written["variants"]:
        healthy = variant["selection"]["out_of_fold"]["healthy_generations"]
        loops = variant["selection"]["out_of_fold"]["loops"]
        assert 0 < healthy + loops <= len(tune)
    assert written["chosen"] in written["variants"]

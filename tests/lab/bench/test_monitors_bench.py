"""``sinkwatch bench monitors`` times single and batched steps and writes what it printed."""

import argparse
import json

from lab.bench import monitors_bench


def test_it_times_each_layer_count_and_number_of_generations(tmp_path):
    parser = argparse.ArgumentParser()
    monitors_bench.add_arguments(parser)
    output = tmp_path / "monitors_bench.json"
    args = parser.parse_args(["--layers", "3", "--generations", "1,4", "--steps", "8", "--repeats", "1"])
    args.output = output
    summary = monitors_bench.run(args)
    timings = summary["per_layers_and_generations"]["3"]
    assert set(timings) == {"1", "4"}
    assert timings["4"]["median_token_ms"] == timings["4"]["median_step_ms"] / 4 > 0
    assert json.loads(output.read_text()) == summary

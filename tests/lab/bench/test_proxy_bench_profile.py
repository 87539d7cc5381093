"""``sinkwatch bench proxy --profile`` finds py-spy in the project's environment, or says how to get it."""

import argparse
import os
import sys

import pytest

from lab.bench import proxy_bench
from lab.fakes import processes


def test_py_spy_is_found_beside_the_python_that_runs_the_bench(tmp_path, monkeypatch):
    executable = tmp_path / "py-spy"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))  # not activated: the environment is not on PATH
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert processes.py_spy() == str(executable)


def test_without_py_spy_the_profile_run_stops_at_once_with_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    parser = argparse.ArgumentParser()
    proxy_bench.add_arguments(parser)
    affinity = os.sched_getaffinity(0)
    with pytest.raises(SystemExit, match="pip install py-spy"):
        proxy_bench.run(parser.parse_args(["--profile"]))
    assert os.sched_getaffinity(0) == affinity  # stopped before binding this process or starting anything

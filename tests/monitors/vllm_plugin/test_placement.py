"""The publisher thread keeps off the CPU cores vLLM binds the model's threads to."""

import os
import threading

import pytest

from monitors.vllm_plugin.placement import bind, parse_cpu_list, publisher_cpus, resolve_cpus, spare_cpus


def test_cpu_lists_read_like_the_kernels():
    assert parse_cpu_list("0,2-3, 6") == {0, 2, 3, 6}
    for bad in ("", "3-1", "-1", "a"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_the_spare_cores_are_the_engines_that_the_worker_is_not_bound_to():
    assert spare_cpus(worker={0}, engine={0, 1}) == {1}  # vLLM's CPU backend: model on 0, 1 reserved
    assert spare_cpus(worker={0, 1}, engine={0, 1}) is None  # unbound worker (GPU host): stay


def test_settings_choose_auto_inherit_or_a_list():
    assert publisher_cpus("inherit") is None
    assert publisher_cpus("1,3") == {1, 3}
    here = os.sched_getaffinity(0)
    auto = publisher_cpus("auto")  # this test process is bound like its parent: nothing spare
    assert auto is None or not (auto & here)


def _affinity_of_a_thread_after(setting: str) -> set[int]:
    seen: list[set[int]] = []

    def run() -> None:
        bind(0, resolve_cpus(setting), "test thread")
        seen.append(os.sched_getaffinity(0))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


def test_only_the_calling_thread_moves():
    before = os.sched_getaffinity(0)
    target = min(before)
    assert _affinity_of_a_thread_after(str(target)) == {target}
    assert os.sched_getaffinity(0) == before


def test_a_core_that_cannot_be_had_leaves_the_thread_where_it_was():
    before = os.sched_getaffinity(0)
    assert _affinity_of_a_thread_after(str(os.cpu_count() + 64)) == before
    assert _affinity_of_a_thread_after("not-a-list") == before

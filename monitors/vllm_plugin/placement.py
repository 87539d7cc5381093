"""Which CPU cores the plugin's publisher thread and reducer process run on: not those that run the model.

vLLM's CPU backend binds each worker process to the cores its OpenMP threads compute on and keeps the
others for its API server and engine core (``VLLM_CPU_OMP_THREADS_BIND``, ``reserve_cpu_num``). A thread
or process the plugin starts in the worker inherits that binding, so its work would preempt the model's
own threads, and one preempted OpenMP thread stalls the whole parallel region. The plugin therefore
moves both to the cores the engine was given but the worker was not. On a GPU host the worker is not
bound to a subset and nothing moves.

``SINKWATCH_VLLM_PUBLISHER_CPUS``: ``auto`` (the default, as above), ``inherit`` (stay with the
worker), or a list of cores such as ``3,6-7``.
"""

import logging
import os

__all__ = ["bind", "parse_cpu_list", "publisher_cpus", "resolve_cpus", "spare_cpus"]

log = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger, so it shows in its log

AUTO, INHERIT = "auto", "inherit"


def parse_cpu_list(text: str) -> frozenset[int]:
    """``"0,2-3"`` -> ``{0, 2, 3}`` (the kernel's cpu-list format)."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, _, last = part.partition("-")
        start, stop = int(first), int(last or first)
        if start < 0 or stop < start:
            raise ValueError(f"not a range of CPU cores: {part!r}")
        cpus.update(range(start, stop + 1))
    if not cpus:
        raise ValueError(f"no CPU cores in {text!r}")
    return frozenset(cpus)


def spare_cpus(worker: set[int], engine: set[int]) -> frozenset[int] | None:
    """The engine's cores the worker is not bound to; None when the worker has them all (nothing to avoid)."""
    spare = frozenset(engine - worker)
    return spare or None


def publisher_cpus(setting: str) -> frozenset[int] | None:
    """The cores the publisher should run on for ``setting``, or None to leave it where it is."""
    choice = setting.strip().lower() or AUTO
    if choice == INHERIT:
        return None
    if choice != AUTO:
        return parse_cpu_list(choice)
    try:  # the worker's own binding (this thread inherited it), and the engine process's that started it
        return spare_cpus(os.sched_getaffinity(0), os.sched_getaffinity(os.getppid()))
    except OSError:
        return None


def resolve_cpus(setting: str) -> frozenset[int] | None:
    """:func:`publisher_cpus`, with a bad setting logged and treated as ``inherit``."""
    try:
        return publisher_cpus(setting)
    except ValueError as error:
        log.warning("sinkwatch: SINKWATCH_VLLM_PUBLISHER_CPUS: %s; staying on the worker's cores", error)
        return None


def bind(task: int, cpus: frozenset[int] | None, what: str) -> None:
    """Bind a process or thread (``task`` 0: the calling thread; Linux affinity is per thread) to ``cpus``."""
    if cpus is None:
        return
    try:
        os.sched_setaffinity(task, cpus)
    except OSError as error:  # a core that cannot be had must not stop monitoring
        log.warning("sinkwatch: %s stays on the worker's cores: %s", what, error)
        return
    log.info("sinkwatch: %s runs on CPU cores %s", what, ",".join(map(str, sorted(cpus))))

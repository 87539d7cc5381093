"""The entry point vLLM calls in each of its processes, and the wiring into the V1 model runner.

It first registers, for the architectures whose vLLM class returns no auxiliary hidden states, subclasses
that do (:mod:`monitors.vllm_plugin.aux_models`; every process resolves the model's class through vLLM's
registry, which imports them lazily). Only worker processes import the model runner module; :func:`register`
waits for that import (a post-import hook) instead of importing it, so the API server and engine core pay
nothing for the tap. In the worker,
three runner methods gain a tap: the end of model loading (enable the auxiliary hidden-state outputs),
``execute_model`` (a step begins: the publisher may work on the previous ones) and ``sample_tokens``
(capture before sampling, publish after).
"""

import functools
import importlib.abc
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from monitors.vllm_plugin.settings import PluginSettings

__all__ = ["wrap_runner"]

log = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger, so it shows in its log

RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"


def register() -> None:
    """``vllm.general_plugins`` entry point; safe to call more than once per process."""
    settings = PluginSettings.from_env()
    if not settings.enabled:
        log.info("sinkwatch: vLLM plugin disabled by SINKWATCH_VLLM_PLUGIN")
        return
    # The tap knows the V1 model runner; vLLM picks V2 by default on some GPUs unless told otherwise.
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    from monitors.vllm_plugin.aux_models import register_aux_models

    register_aux_models()
    after_import(RUNNER_MODULE, lambda module: wrap_runner(module.GPUModelRunner, settings))


def after_import(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once module ``name`` is imported: now if it already is, else right after."""
    if name in sys.modules:
        callback(sys.modules[name])
    elif not any(isinstance(f, _PostImportHook) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportHook(name, callback))


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the regular finders locate ``name`` and runs a callback after it loads."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self._callback = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_then_call(module: ModuleType) -> None:
            execute(module)
            self._callback(module)

        spec.loader.exec_module = exec_then_call
        return spec


def wrap_runner(runner_cls: type, settings: PluginSettings) -> None:
    """Give ``runner_cls`` (vLLM's ``GPUModelRunner``, base of the CPU runner) the sinkwatch tap."""
    if getattr(runner_cls, "_sinkwatch_wrapped", False):
        return
    setup_aux = runner_cls._setup_eagle3_aux_hidden_state_outputs
    execute_model = runner_cls.execute_model
    sample_tokens = runner_cls.sample_tokens

    @functools.wraps(setup_aux)
    def setup_aux_and_tap(self: Any) -> None:
        setup_aux(self)
        from monitors.vllm_plugin.attach import attach_tap

        self._sinkwatch_tap = attach_tap(self, settings)

    @functools.wraps(execute_model)
    def execute_model_tapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        tap = getattr(self, "_sinkwatch_tap", None)
        if tap is not None:
            tap.step_started()
        return execute_model(self, *args, **kwargs)

    @functools.wraps(sample_tokens)
    def sample_tokens_tapped(self: Any, grammar_output: Any) -> Any:
        tap = getattr(self, "_sinkwatch_tap", None)
        if tap is None:
            return sample_tokens(self, grammar_output)
        rows = tap.capture()
        output = sample_tokens(self, grammar_output)
        tap.publish(rows, output)
        return output

    runner_cls._setup_eagle3_aux_hidden_state_outputs = setup_aux_and_tap
    runner_cls.execute_model = execute_model_tapped
    runner_cls.sample_tokens = sample_tokens_tapped
    runner_cls._sinkwatch_wrapped = True

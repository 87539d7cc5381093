"""Decides whether a model runner can be monitored and, if so, builds its tap and publisher."""

import atexit
import logging
from typing import Any

from vllm.distributed.parallel_state import get_pp_group, get_tp_group
from vllm.model_executor.models.interfaces import supports_eagle3

from monitors.bands import captured_layers, parse_bands
from monitors.vllm_plugin.publisher import FeaturePublisher
from monitors.vllm_plugin.settings import PluginSettings
from monitors.vllm_plugin.tap import RunnerTap, resolve_calibration
from monitors.vllm_plugin.wire import monitor_profile

__all__ = ["attach_tap"]

log = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger, so it shows in its log


def unsupported(runner: Any) -> str | None:
    """Why this runner cannot be monitored, or None."""
    if runner.is_pooling_model:
        return "pooling models generate no tokens"
    if runner.speculative_config is not None:
        return "speculative decoding is not supported"
    if runner.use_aux_hidden_state_outputs:
        return "the auxiliary hidden-state outputs are already used (EAGLE-3)"
    if get_pp_group().world_size > 1:
        return "pipeline parallelism is not supported"
    if not supports_eagle3(runner.get_model()):
        return (
            f"{type(runner.get_model()).__name__} has no auxiliary hidden-state outputs (vLLM's SupportsEagle3) "
            "and is not among the architectures the plugin gives them (aux_models.RESIDUAL_LOOP_DECODERS)"
        )
    return None


def attach_tap(runner: Any, settings: PluginSettings) -> RunnerTap | None:
    """A started tap for ``runner``, or None (logged) when it cannot or need not be monitored.

    With tensor parallelism every rank holds the whole residual stream; only the first publishes.
    """
    if get_tp_group().rank_in_group != 0:
        return None
    if problem := unsupported(runner):
        log.warning("sinkwatch: not monitoring this engine: %s", problem)
        return None
    served = runner.model_config.served_model_name
    names = [served] if isinstance(served, str) else list(served)
    num_layers = runner.model_config.hf_text_config.num_hidden_layers
    try:
        calibration = resolve_calibration(settings.calibration, names, num_layers, settings.await_calibration)
    except FileNotFoundError as missing:  # a wrong SINKWATCH_CALIBRATION: never another model's thresholds
        log.error("sinkwatch: %s. Not monitoring.", missing)
        return None
    if not calibration.calibrated and settings.calibration:
        log.warning(
            "sinkwatch: %s not written yet; monitoring %s uncalibrated until it is (SINKWATCH_AWAIT_CALIBRATION)",
            settings.calibration,
            names[0],
        )
    elif not calibration.calibrated:
        log.warning(
            "sinkwatch: no calibration for %s; monitoring it uncalibrated (verdicts 'uncalibrated'). "
            "Set SINKWATCH_CALIBRATION to judge it.",
            names[0],
        )
    bands = parse_bands(settings.bands) if settings.bands else calibration.bands
    layers = captured_layers(bands)
    if layers[0] < 0 or layers[-1] >= num_layers:
        log.warning("sinkwatch: layers %s outside the model's %d layers; not monitoring", layers, num_layers)
        return None
    aux_layers = tuple(layer + 1 for layer in layers)
    if not _key_compile_cache(runner.vllm_config, aux_layers):
        return None
    runner.get_model().set_aux_hidden_state_layers(aux_layers)
    runner.use_aux_hidden_state_outputs = True
    profile = monitor_profile(calibration, bands)
    publisher = FeaturePublisher(calibration, bands, settings.publisher_cpus, settings.calibration)
    publisher.start()
    atexit.register(publisher.close)
    log.info("sinkwatch: monitoring decoder layers %s (profile %s)", layers, profile)
    return RunnerTap(runner, publisher)


def _key_compile_cache(vllm_config: Any, aux_layers: tuple[int, ...]) -> bool:
    """Make the auxiliary outputs part of the config hash that keys vLLM's compiled-graph cache.

    The hash is taken when the model is first compiled, after loading; without this, a graph compiled
    without the outputs (plugin off) would be loaded with the plugin on, and the other way round.
    """
    if not isinstance(vllm_config.additional_config, dict):
        log.warning("sinkwatch: additional_config is not a dict; cannot key the compile cache. Not monitoring.")
        return False
    vllm_config.additional_config["sinkwatch_aux_hidden_state_layers"] = list(aux_layers)
    return True

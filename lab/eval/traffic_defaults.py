"""The base a recording made under an *uncalibrated* model is fitted on: a model-independent signal set on the
setup the recording was made with.

A model served without a calibration runs the monitors on its own derived profile
(:func:`monitors.model_profile.uncalibrated`) and judges nothing, so its recording names no signals and no
loop level. Without labels nothing can select signals on this model either, so the fit uses a fixed set,
chosen where labels existed and carried over by what each signal measures, not by its SmolLM2 level:

- ``text.periodicity``: a text rule on token ids (the share of the last 16 tokens repeating the text one and
  two periods earlier), the same on any tokenizer; the SmolLM2 out-of-fold selection always keeps it.
- ``<band>.recurrence`` of every band: how close each new hidden state comes to an earlier one in the window;
  the SmolLM2 selection keeps the early band's (``lab/eval/thresholds.py``), and which band carries a loop
  depends on the model, so every band's is fitted and the combined rate is held to the target.

All are tracked as ``sinkwatch calibrate`` tracks a signal by default (:class:`lab.eval.fit.FitOptions`: EWMA,
span 8, persistence 4), never with SmolLM2's own per-signal reactions. Their thresholds, means and spreads
are all fitted on the recording (:func:`lab.eval.traffic_fit.fit_split`).

The loop filter that keeps visible loops out of the fit is :data:`VISIBLE_LOOP`: the raw periodicity at or
above 15/16 (``0.9``) for a whole periodicity window (16 tokens), i.e. a stretch whose text is its own third
repetition. It is a definition of a visible loop, not a fitted level.
"""

from collections.abc import Mapping
from typing import Any

from lab.eval.fit import FitOptions
from lab.eval.traffic import SetupMismatch
from monitors.bands import LayerBand, default_bands
from monitors.calibration import Calibration, SignalThreshold
from monitors.detector import PERIODICITY_SIGNAL
from monitors.model_profile import ModelProfile
from monitors.text import PERIODICITY_WINDOW

__all__ = [
    "DEFAULT_SINK_METRICS",
    "VISIBLE_LOOP",
    "default_base",
    "default_signals",
    "plugin_bands",
    "profile_mean_states",
]

DEFAULT_SINK_METRICS = ("recurrence",)
VISIBLE_LOOP = SignalThreshold(PERIODICITY_SIGNAL, "high", 0.9, "sink", "ewma", span=1, persistence=PERIODICITY_WINDOW)


def default_signals(bands: tuple[LayerBand, ...]) -> tuple[SignalThreshold, ...]:
    """The default sink signals on ``bands``, thresholds unset (NaN) until fitted."""
    names = [PERIODICITY_SIGNAL] + [f"{band.name}.{metric}" for band in bands for metric in DEFAULT_SINK_METRICS]
    return tuple(SignalThreshold(name, "high", float("nan"), "sink", "ewma") for name in names)


def default_base(model: str, setup: Mapping[str, Any], mean_states: Mapping[int, list[float]]) -> Calibration:
    """The base calibration of a recording made uncalibrated: the recorded setup (bands, window, outlier
    dimensions, recurrence levels), the drift reference ``mean_states`` of the model's derived profile, and
    the default signals, tracked with the default span and persistence."""
    options = FitOptions()
    bands = tuple(LayerBand(name, tuple(layers)) for name, layers in setup["bands"].items())
    return Calibration(
        model=model,
        window=int(setup["window"]),
        bands=bands,
        ewma_span=options.ewma_span,
        persistence=options.persistence,
        min_agreeing=1,
        target_fpr=options.target_fpr,
        signals=default_signals(bands),
        rank_floors={},
        mean_states={int(layer): list(state) for layer, state in mean_states.items()},
        created="default signals",
        outlier_dims={int(layer): list(dims) for layer, dims in setup["outlier_dims"].items()},
        recurrence_levels={int(layer): float(level) for layer, level in (setup["recurrence_levels"] or {}).items()},
    )


def _recorded_profile(profile: ModelProfile) -> dict[str, Any]:
    return {
        "bands": {band.name: list(band.layers) for band in profile.bands},
        "window": profile.window,
        "outlier_dims": {str(layer): dims for layer, dims in profile.outlier_dims.items()},
    }


def profile_mean_states(model: str, setup: Mapping[str, Any]) -> dict[int, list[float]]:
    """The drift reference of ``model`` (a packaged name, .gguf or transformers folder, as ``serve --model``
    takes it): its profile derived again as the gateway derived it when serving it uncalibrated. The
    recording does not hold the mean states; its bands, window and outlier dimensions must be the profile's,
    so that the calibration computes the features the recording was made with."""
    from gateway.engine.loader import load_model
    from gateway.engine.provision import provision
    from monitors.model_profile import profile_model

    loaded = load_model(provision(model), model)
    profile = profile_model(loaded.model, loaded.tokenizer)
    derived, recorded = (
        _recorded_profile(profile),
        {name: setup.get(name) for name in ("bands", "window", "outlier_dims")},
    )
    differing = [name for name, value in derived.items() if recorded[name] != value]
    if differing:
        raise SetupMismatch(
            f"{model} derives another profile than the recording was made with ({', '.join(differing)} differ); "
            "pass the model the recording was made with as --model"
        )
    return profile.mean_states


def plugin_bands(model: str) -> dict[str, list[int]]:
    """The bands the vLLM plugin captures on ``model`` (as ``serve --model`` takes it) without a calibration: the
    thirds of its depth (``monitors.vllm_plugin.tap.resolve_calibration``). A gateway in front of vLLM cannot see
    the model's depth, so its uncalibrated recording names no bands."""
    from transformers import AutoConfig

    from gateway.engine.provision import provision

    depth = AutoConfig.from_pretrained(provision(model)).get_text_config().num_hidden_layers
    return {band.name: list(band.layers) for band in default_bands(depth)}

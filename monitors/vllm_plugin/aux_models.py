"""Auxiliary hidden-state outputs for vLLM models that have none (no ``SupportsEagle3``), e.g. Gemma 3.

The tap reads the residual stream after chosen decoder layers from the outputs of the compiled forward pass
(tap.py). vLLM's Llama, Qwen and most families return them (EAGLE-3's auxiliary outputs); others, such as
``Gemma3ForCausalLM``, do not. For those the plugin registers (``ModelRegistry.register_model``) a subclass
of the served architecture whose decoder returns them, so capture works under torch.compile and CUDA graphs
as it does for Llama; a forward hook would need ``--enforce-eager``.

The subclass builds its decoder (the model class vLLM decorates with ``support_torch_compile``) as a
subclass whose ``forward`` is the usual residual loop with vLLM's own ``EagleModelMixin`` bookkeeping: embed,
``hidden, residual = layer(positions, hidden, residual, **kwargs)`` per layer, record ``hidden + residual``
after each chosen layer, final norm. It must be built as that subclass (vLLM's compile wrapper binds the
``forward`` it compiles when the decoder is constructed), so the decoder's class name is substituted in its
module while the causal LM is constructed. With no layers chosen (the plugin inactive) and with pipeline
parallelism the decoder's own ``forward`` runs unchanged.

An architecture is listed in :data:`RESIDUAL_LOOP_DECODERS` only once its vLLM decoder's ``forward`` has been
read to be exactly that loop (no per-layer extras such as per-layer inputs or cross-layer KV sharing) and its
captured states checked against the embedded engine's (tests/vllm/test_gemma.py).
"""

import contextlib
import importlib
from collections.abc import Iterator
from functools import cache
from itertools import islice
from types import ModuleType
from typing import Any

import torch
from vllm.distributed.parallel_state import get_pp_group
from vllm.model_executor.models.interfaces import EagleModelMixin, SupportsEagle3

__all__ = ["RESIDUAL_LOOP_DECODERS", "register_aux_models", "with_aux_outputs"]

# vLLM architecture -> (its module, the decoder class the causal LM builds as ``self.model``)
RESIDUAL_LOOP_DECODERS: dict[str, tuple[str, str]] = {
    "Gemma3ForCausalLM": ("vllm.model_executor.models.gemma3", "Gemma3Model"),
}


class ResidualLoopAux(EagleModelMixin):
    """A decoder whose ``forward`` also returns the residual stream after the chosen layers."""

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if not self.aux_hidden_state_layers or get_pp_group().world_size > 1:
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        residual = None
        aux = self._maybe_add_hidden_state([], 0, hidden, residual)
        for index, layer in enumerate(islice(self.layers, self.start_layer, self.end_layer), self.start_layer + 1):
            hidden, residual = layer(positions, hidden, residual, **kwargs)
            self._maybe_add_hidden_state(aux, index, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden, aux


@contextlib.contextmanager
def _substituted(module: ModuleType, name: str, replacement: type) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


@cache
def with_aux_outputs(architecture: str) -> type:
    """The subclass of vLLM's ``architecture`` (a key of :data:`RESIDUAL_LOOP_DECODERS`) with auxiliary outputs."""
    module_name, decoder_name = RESIDUAL_LOOP_DECODERS[architecture]
    module = importlib.import_module(module_name)
    causal_lm: type = getattr(module, architecture)
    decoder = type(
        decoder_name,
        (ResidualLoopAux, getattr(module, decoder_name)),
        {"__module__": __name__, "__qualname__": decoder_name},
    )

    def __init__(self: Any, *, vllm_config: Any, prefix: str = "") -> None:
        with _substituted(module, decoder_name, decoder):
            causal_lm.__init__(self, vllm_config=vllm_config, prefix=prefix)

    namespace = {"__init__": __init__, "__module__": __name__, "__qualname__": architecture}
    return type(architecture, (causal_lm, SupportsEagle3), namespace)


def __getattr__(name: str) -> type:
    """``monitors.vllm_plugin.aux_models:<architecture>``, the form ``ModelRegistry.register_model`` imports."""
    if name in RESIDUAL_LOOP_DECODERS:
        return with_aux_outputs(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_aux_models() -> None:
    """Serve every listed architecture as its subclass with auxiliary outputs (imported lazily by vLLM)."""
    from vllm import ModelRegistry

    for architecture in RESIDUAL_LOOP_DECODERS:
        ModelRegistry.register_model(architecture, f"{__name__}:{architecture}")

"""Load a provisioned transformers folder into memory for the embedded engine."""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

__all__ = ["LoadedModel", "load_model"]


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM with its tokenizer and what the engine needs to know about it."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    eos_token_ids: frozenset[int]
    max_context: int
    max_token_chars: int  # characters of the longest token: a bound on the characters any token covers

    @property
    def decoder_layers(self) -> torch.nn.ModuleList:
        """The residual-stream blocks, in order."""
        return self.model.model.layers

    @property
    def num_layers(self) -> int:
        """How many decoder layers the model has."""
        return len(self.decoder_layers)

    @property
    def vocab_size(self) -> int:
        """Width of the logits."""
        return self.model.config.vocab_size


def load_model(folder: Path, name: str, chat_template: str | None = None) -> LoadedModel:
    """Load weights in float32 for CPU inference (the model is small; fp32 is the fast path on CPU);
    ``chat_template`` (Jinja) replaces the tokenizer's own."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = set()
    for source in (model.config.eos_token_id, _generation_eos(folder), tokenizer.eos_token_id):
        eos.update(source if isinstance(source, list) else [source] if source is not None else [])
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        eos_token_ids=frozenset(eos),
        max_context=int(getattr(model.config, "max_position_embeddings", 2048)),
        # Vocabulary entries spell a byte-level token one character per byte, so their length bounds the
        # characters of text the token stands for.
        max_token_chars=max(map(len, tokenizer.get_vocab())),
    )


def _generation_eos(folder: Path) -> int | list[int] | None:
    if not (folder / "generation_config.json").is_file():
        return None
    return GenerationConfig.from_pretrained(folder).eos_token_id

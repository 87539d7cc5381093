"""Generate many completions with the embedded engine, then recover their hidden states by teacher forcing.

Generation runs through the same engine the gateway serves with (batched, seeded). The states behind
every generated token are then recomputed in one prefill of prompt + completion, with hooks on the
chosen layers: the same states the engine saw, available to replay through any feature extractor.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gateway.engine.engine import EmbeddedEngine
from gateway.engine.loader import LoadedModel
from gateway.generation import ChatPrompt, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from monitors.capture import ResidualCapture
from monitors.entropy import next_token_entropies

__all__ = ["GenerationJob", "GenerationRecord", "generate_all", "teacher_forced_pass", "teacher_forced_states"]


@dataclass(frozen=True)
class GenerationJob:
    """A prompt and how to sample it."""

    key: str
    messages: tuple[dict, ...]
    sampling: SamplingParams


@dataclass
class GenerationRecord:
    """A finished generation: the prompt's token ids, the completion's ids and text, why it ended."""

    key: str
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    finish_reason: str


async def _generate_one(engine: EmbeddedEngine, job: GenerationJob) -> GenerationRecord:
    request = GenerationRequest(job.key, engine.loaded.name, ChatPrompt(job.messages), job.sampling, monitor=False)
    prompt_ids = engine.encode_prompt(request)
    output_ids, pieces, finish = [], [], None
    async for event in engine.submit(request, prompt_ids):
        if isinstance(event, TokenEvent):
            pieces.append(event.text)
            if event.token_id is not None:
                output_ids.append(event.token_id)
        elif isinstance(event, FinishEvent):
            finish = event.finish_reason
    return GenerationRecord(job.key, prompt_ids, output_ids, "".join(pieces), finish)


def generate_all(engine: EmbeddedEngine, jobs: Sequence[GenerationJob]) -> list[GenerationRecord]:
    """Run every job through the engine (which batches them) and return records in job order."""

    async def run() -> list[GenerationRecord]:
        slots = asyncio.Semaphore(engine.config.max_batch + engine.config.max_queue // 2)

        async def bounded(job: GenerationJob) -> GenerationRecord:
            async with slots:
                return await _generate_one(engine, job)

        return await asyncio.gather(*(bounded(job) for job in jobs))

    return asyncio.run(run())


@dataclass
class TokenStates:
    """Per generated token: captured states ``[T, layers, d]`` and next-token entropy ``[T]``."""

    layers: tuple[int, ...]
    states: np.ndarray
    entropy: np.ndarray


@torch.inference_mode()
def teacher_forced_pass(
    loaded: LoadedModel, record: GenerationRecord, layers: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[tokens, vocab]`` and states ``[tokens, layers, d]`` at the positions that produced each
    generated token, from one prefill."""
    ids = record.prompt_ids + record.output_ids[:-1]
    first = len(record.prompt_ids) - 1
    capture = ResidualCapture(loaded.decoder_layers, layers, all_positions=True)
    with capture.attached():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, first:].float()
        states = capture.take()[0, first:]
    return logits, states


def teacher_forced_states(loaded: LoadedModel, record: GenerationRecord, layers: Sequence[int]) -> TokenStates:
    """States and next-token entropy behind each generated token, from one prefill."""
    logits, states = teacher_forced_pass(loaded, record, layers)
    return TokenStates(tuple(layers), states.numpy(), next_token_entropies(logits).numpy())

"""The labelled evaluation corpus: the served model's own generations under normal and sink-inducing settings.

Each generation is produced by the embedded engine (batched, seeded), then teacher-forced once to
record, for every generated token, the residual stream at every layer (float16), the next-token
entropy, and logit-lens entropies at a few layers. Everything is cached under
``~/.cache/sinkwatch/eval/<corpus>/`` (never committed) so analyses replay without the model.
"""

import json
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from gateway.engine.engine import EmbeddedEngine, encode_prompt
from gateway.engine.engine_config import EngineConfig
from gateway.engine.loader import LoadedModel
from gateway.engine.provision import cache_root
from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams
from lab.eval.human_text import DOCUMENT_TOKENS, human_documents
from lab.eval.prompts import PromptCase, load_prompts
from lab.eval.runner import GenerationJob, GenerationRecord, generate_all, teacher_forced_pass
from monitors.bands import default_bands
from monitors.entropy import next_token_entropies

__all__ = [
    "CONDITIONS",
    "CORPUS_VERSION",
    "HUMAN_SET",
    "INDUCERS",
    "PRODUCTION_CONDITIONS",
    "PRODUCTION_CORPUS",
    "RANK_HEALTHY_CORPUS",
    "Condition",
    "CorpusEntry",
    "build_corpus",
    "conditions_of",
    "corpus_dir",
    "load_arrays",
    "missing_jobs",
    "read_manifest",
    "state_shape",
]

CORPUS_VERSION = "v1"
PRODUCTION_CORPUS = "production-v1"
RANK_HEALTHY_CORPUS = "rank-healthy-v1"
HUMAN_SET = "human"
LOGIT_LENS_STRIDE = 5


@dataclass(frozen=True)
class Condition:
    """A sampling setting applied to a prompt set; ``bias_text``'s first token gets ``bias`` added to its
    logit (the tokenizer resolves it when the corpus is built)."""

    name: str
    temperature: float
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    bias_text: str | None = None
    bias: float = 0.0

    @property
    def inducer(self) -> str:
        """What in the client's sampling pushes toward repetition (``none`` when nothing does)."""
        if self.repetition_penalty < 1:
            return "repetition_penalty"
        if self.frequency_penalty < 0:
            return "frequency_penalty"
        if self.presence_penalty < 0:
            return "presence_penalty"
        if self.bias > 0:
            return "logit_bias"
        return "none"


# Which settings each prompt set is generated under: normal traffic, and settings known to induce sinks.
CONDITIONS: dict[str, tuple[Condition, ...]] = {
    "normal": (Condition("t0.7", 0.7, 0.95), Condition("t1.0", 1.0), Condition("greedy", 0.0)),
    "loop": (Condition("greedy", 0.0), Condition("t0.3-rep0.8", 0.3, 1.0, 0.8), Condition("t0.7", 0.7, 0.95)),
    "bland": (Condition("t0.7", 0.7, 0.95), Condition("greedy", 0.0)),
}

# Traffic that looks like production (docs/EVALUATION.md, "Verdicts"): ordinary requests sampled and
# greedy; ordinary requests under every loop inducer a client can set; long enumerations under greedy
# decoding; and human-written documents teacher-forced through the model (no generation).
INDUCERS = (
    Condition("greedy-rep0.8", 0.0, repetition_penalty=0.8),
    Condition("greedy-freq-1.0", 0.0, frequency_penalty=-1.0),
    Condition("greedy-pres-1.5", 0.0, presence_penalty=-1.5),
    Condition("t0.7-bias+6", 0.7, 0.95, bias_text=" the", bias=6.0),
)
PRODUCTION_CONDITIONS: dict[str, tuple[Condition, ...]] = {
    HUMAN_SET: (Condition("human", 0.0),),
    "induce": INDUCERS,
    "enumeration": (Condition("greedy", 0.0),),
    "production": (Condition("t0.7", 0.7, 0.95), Condition("greedy", 0.0)),
}

# More healthy traffic for the rank-exhaustion floors (``sinkwatch eval rank``), beside the production
# corpus's: the ordinary prompt sets sampled and greedy, and the production prompts at temperature 1.
RANK_HEALTHY_CONDITIONS: dict[str, tuple[Condition, ...]] = {
    "normal": (Condition("t0.7", 0.7, 0.95), Condition("greedy", 0.0)),
    "production": (Condition("t1.0", 1.0),),
    "bland": (Condition("t0.7", 0.7, 0.95),),
}


@dataclass
class CorpusEntry:
    """One generation's metadata; its arrays live beside the manifest."""

    key: str
    prompt_id: str
    prompt_set: str
    split: str
    condition: str
    temperature: float
    repetition_penalty: float
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    finish_reason: str
    kind: str = ""
    inducer: str = "none"
    sampling: dict = field(default_factory=dict)


def corpus_dir(name: str = CORPUS_VERSION) -> Path:
    """Where a corpus is cached: ``<cache>/eval/<name>``, or ``name`` itself when it is an absolute path."""
    return Path(name) if Path(name).is_absolute() else cache_root() / "eval" / name


def _cases(prompt_set: str, split: str | None) -> list[PromptCase]:
    if prompt_set != HUMAN_SET:
        return load_prompts(prompt_set, split)
    docs = human_documents()
    return [PromptCase(d.id, d.split, d.kind, d.messages, {}) for d in docs if split in (None, d.split)]


def _jobs(
    max_tokens: int,
    split: str | None,
    prompts_per_set: int | None = None,
    conditions: Mapping[str, tuple[Condition, ...]] = CONDITIONS,
) -> list[tuple[GenerationJob, PromptCase, str, Condition]]:
    jobs = []
    for prompt_set, set_conditions in conditions.items():
        for case in _cases(prompt_set, split)[:prompts_per_set]:
            for condition in set_conditions:
                sampling = SamplingParams(
                    max_tokens=case.params.get("max_tokens", max_tokens),
                    temperature=condition.temperature,
                    top_p=condition.top_p,
                    repetition_penalty=condition.repetition_penalty,
                    frequency_penalty=condition.frequency_penalty,
                    presence_penalty=condition.presence_penalty,
                    seed=zlib.crc32(f"{case.id}/{condition.name}".encode()),
                )
                key = f"{case.id}@{condition.name}"
                jobs.append((GenerationJob(key, case.messages, sampling), case, prompt_set, condition))
    return jobs


@torch.inference_mode()
def _record_arrays(loaded: LoadedModel, record: GenerationRecord, lens: bool) -> dict[str, np.ndarray]:
    """All-layer states, entropy and (with ``lens``) logit-lens entropies behind every generated token."""
    layers = list(range(loaded.num_layers))
    logits, states = teacher_forced_pass(loaded, record, layers)
    if not lens:
        return {"states": states.half().numpy(), "entropy": next_token_entropies(logits).numpy()}
    lens_layers = layers[LOGIT_LENS_STRIDE - 1 :: LOGIT_LENS_STRIDE]
    head, norm = loaded.model.lm_head, loaded.model.model.norm
    lens = torch.stack([next_token_entropies(head(norm(states[:, layer]))) for layer in lens_layers], dim=1)
    return {
        "states": states.half().numpy(),
        "entropy": next_token_entropies(logits).numpy(),
        "lens_entropy": lens.numpy(),
        "lens_layers": np.array(lens_layers),
    }


def conditions_of(name: str) -> Mapping[str, tuple[Condition, ...]]:
    """The prompt sets and conditions of a corpus: the production-like traffic for ``PRODUCTION_CORPUS``
    (and corpora named after it), the rank floors' extra healthy traffic for ``RANK_HEALTHY_CORPUS``, the
    original sets otherwise."""
    if Path(name).name.startswith(PRODUCTION_CORPUS):
        return PRODUCTION_CONDITIONS
    return RANK_HEALTHY_CONDITIONS if Path(name).name.startswith(RANK_HEALTHY_CORPUS) else CONDITIONS


def missing_jobs(
    max_tokens: int, name: str = CORPUS_VERSION, split: str | None = None, prompts_per_set: int | None = None
) -> list[tuple[GenerationJob, PromptCase, str, Condition]]:
    """The corpus generations (of one split, or all; of the first prompts of each set) not cached yet."""
    manifest = corpus_dir(name) / "manifest.jsonl"
    done = {entry.key for entry in read_manifest(name)} if manifest.is_file() else set()
    return [job for job in _jobs(max_tokens, split, prompts_per_set, conditions_of(name)) if job[0].key not in done]


def _resolve_bias(loaded: LoadedModel, job: GenerationJob, condition: Condition) -> GenerationJob:
    """The job with its condition's logit bias on the first token of ``bias_text``."""
    if condition.bias_text is None:
        return job
    token = loaded.tokenizer.encode(condition.bias_text, add_special_tokens=False)[0]
    return replace(job, sampling=replace(job.sampling, logit_bias={token: condition.bias}))


def _read_document(loaded: LoadedModel, job: GenerationJob) -> GenerationRecord:
    """A human document as if the model had written it: the request's prompt ids, the text's first
    ``DOCUMENT_TOKENS`` token ids."""
    text = next(d.text for d in human_documents() if job.key.startswith(f"{d.id}@"))
    request = GenerationRequest(job.key, loaded.name, ChatPrompt(job.messages), job.sampling, monitor=False)
    output_ids = loaded.tokenizer.encode(text, add_special_tokens=False)[:DOCUMENT_TOKENS]
    return GenerationRecord(
        job.key, encode_prompt(loaded, request), output_ids, loaded.tokenizer.decode(output_ids), "length"
    )


def build_corpus(
    loaded: LoadedModel,
    max_tokens: int = 160,
    max_batch: int = 8,
    name: str = CORPUS_VERSION,
    split: str | None = None,
    prompts_per_set: int | None = None,
) -> Path:
    """Generate (or complete) the corpus, or one split of it; already cached generations are kept.

    ``prompts_per_set`` keeps only the first prompts of each set (for miniature corpora in tests)."""
    root = corpus_dir(name)
    (root / "arrays").mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.jsonl"
    todo = [
        (_resolve_bias(loaded, job, condition), case, prompt_set, condition)
        for job, case, prompt_set, condition in missing_jobs(max_tokens, name, split, prompts_per_set)
    ]
    print(f"corpus {name}: {len(todo)} generations to make")
    if not todo:
        return root
    engine = EmbeddedEngine(loaded, EngineConfig(max_batch=max_batch, capture=False), default_bands(loaded.num_layers))
    engine.start()
    try:
        for start in range(0, len(todo), 48):
            chunk = todo[start : start + 48]
            generated = generate_all(engine, [job for job, _, prompt_set, _ in chunk if prompt_set != HUMAN_SET])
            records = [
                _read_document(loaded, job) if prompt_set == HUMAN_SET else generated.pop(0)
                for job, _, prompt_set, _ in chunk
            ]
            with manifest.open("a") as out:
                for record, (job, case, prompt_set, condition) in zip(records, chunk, strict=True):
                    if not record.output_ids:
                        continue
                    arrays = _record_arrays(loaded, record, lens=conditions_of(name) is CONDITIONS)
                    np.savez(root / "arrays" / f"{record.key}.npz", **arrays)
                    entry = CorpusEntry(
                        key=record.key,
                        prompt_id=case.id,
                        prompt_set=prompt_set,
                        split=case.split,
                        condition=condition.name,
                        temperature=condition.temperature,
                        repetition_penalty=condition.repetition_penalty,
                        prompt_ids=record.prompt_ids,
                        output_ids=record.output_ids,
                        text=record.text,
                        finish_reason=record.finish_reason,
                        kind=case.kind,
                        inducer=condition.inducer,
                        sampling={
                            "frequency_penalty": job.sampling.frequency_penalty,
                            "presence_penalty": job.sampling.presence_penalty,
                            "logit_bias": job.sampling.logit_bias,
                            "max_tokens": job.sampling.max_tokens,
                        },
                    )
                    out.write(json.dumps(asdict(entry)) + "\n")
            print(f"corpus {name}: {min(start + 48, len(todo))}/{len(todo)}", flush=True)
    finally:
        engine.shutdown()
    return root


def read_manifest(name: str = CORPUS_VERSION) -> list[CorpusEntry]:
    """Every cached generation's metadata."""
    path = corpus_dir(name) / "manifest.jsonl"
    return [CorpusEntry(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def load_arrays(entry: CorpusEntry, name: str = CORPUS_VERSION) -> dict[str, np.ndarray]:
    """The arrays recorded for one generation, with the extra offline pass's arrays when there are any."""
    arrays = {}
    for path in (
        corpus_dir(name) / "arrays" / f"{entry.key}.npz",
        corpus_dir(name) / "arrays" / f"{entry.key}.extra.npz",
    ):
        if path.is_file() or not arrays:
            with np.load(path) as data:
                arrays.update({k: data[k] for k in data.files})
    return arrays


def state_shape(name: str = CORPUS_VERSION) -> tuple[int, int]:
    """``(layers, width)`` of the residual states stored in a corpus."""
    first = read_manifest(name)[0]
    with np.load(corpus_dir(name) / "arrays" / f"{first.key}.npz") as data:
        _, layers, width = data["states"].shape
    return int(layers), int(width)

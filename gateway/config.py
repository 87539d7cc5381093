"""Settings: every field is a CLI flag, a ``SINKWATCH_*`` environment variable and a YAML key.

Precedence, lowest first: defaults, the YAML file (``--config``), the environment, the command line.
"""

import argparse
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

import yaml

ENV_PREFIX = "SINKWATCH_"


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """Everything `sinkwatch serve` can be told."""

    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8000, "port to listen on")
    backend: str = _setting("embedded", "where tokens come from", ("embedded",))
    model: str = _setting("SmolLM2-135M-Instruct", "packaged model name, .gguf file or transformers folder")
    served_model_name: str = _setting("", "name clients use for the model (default: derived from --model)")
    max_batch: int = _setting(8, "embedded engine: requests decoded together")
    max_queue: int = _setting(64, "embedded engine: requests waiting for a slot before 429")
    max_model_len: int = _setting(2048, "embedded engine: prompt plus completion tokens")
    capture: bool = _setting(True, "capture hidden states and run the monitors")
    calibration: str = _setting("", "calibration file (default: the one shipped for the model)")
    bands: str = _setting("", "layer bands, e.g. 'early=4,7;middle=13,17;late=23,27' (default: calibration's)")
    policy: str = _setting("annotate", "what to do with verdicts", ("observe", "annotate"))
    log_level: str = _setting("info", "log level", ("debug", "info", "warning", "error"))

    def served_name(self) -> str:
        """The model name clients use."""
        from gateway.engine.provision import served_name

        return self.served_model_name or served_name(self.model)


def _field_types() -> dict[str, type]:
    return get_type_hints(Settings)


def _coerce(name: str, raw: Any) -> Any:
    kind = _field_types()[name]
    if kind is bool and isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
            raise ValueError(f"{name}: {raw!r} is not a boolean")
        return lowered in {"1", "true", "yes", "on"}
    return kind(raw)


def _validated(settings: Settings) -> Settings:
    for f in fields(Settings):
        choices = f.metadata.get("choices")
        if choices and getattr(settings, f.name) not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}, not {getattr(settings, f.name)!r}")
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults stay unset so that YAML and environment can fill them."""
    parser.add_argument("--config", type=Path, help="YAML file of settings (keys as the flags, with underscores)")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        help_text = f"{f.metadata['help']} [env {env}; default {f.default!r}]"
        if _field_types()[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(
                flag, type=_field_types()[f.name], default=None, choices=f.metadata.get("choices"), help=help_text
            )


def load_settings(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Merge defaults, YAML, environment and flags into validated settings."""
    environ = os.environ if environ is None else environ
    names = {f.name for f in fields(Settings) if f.default is not MISSING}
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        loaded = yaml.safe_load(Path(config_path).read_text()) or {}
        unknown = set(loaded) - names
        if unknown:
            raise ValueError(f"unknown settings in {config_path}: {', '.join(sorted(unknown))}")
        values.update({k: _coerce(k, v) for k, v in loaded.items()})
    for name in names:
        if (raw := environ.get(ENV_PREFIX + name.upper())) is not None:
            values[name] = _coerce(name, raw)
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    return _validated(replace(Settings(), **values))

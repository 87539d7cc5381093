"""Settings: every field is a CLI flag, a ``SINKWATCH_*`` environment variable and a YAML key.

Precedence, lowest first: defaults, the YAML file (``--config``), the environment, the command line.
:func:`resolve_settings` merges the layers itself, remembering where each value came from, and the
pydantic-settings model validates the result: a value of the wrong type (``port: 80.9``) or out of range,
and a key that is no setting, is an error naming the setting and its source (YAML file, environment
variable or flag). Secrets are :class:`~pydantic.SecretStr`, masked in every repr, log line and in
``sinkwatch config``. The comma-separated lists (``api_keys``, ``upstreams``, ``cors_origins``) may also
be YAML lists of strings, joined with commas.
"""

import argparse
import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.gate.policy import GateConfig, Policy
from gateway.gate.rescue import STRATEGIES

__all__ = ["ENV_PREFIX", "ResolvedSettings", "Settings", "add_arguments", "load_settings", "resolve_settings"]

ENV_PREFIX = "SINKWATCH_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
# SINKWATCH_* variables that are no setting of `sinkwatch serve` but belong to sinkwatch: the config file,
# the model cache (gateway/engine/provision.py), the vLLM plugin's (monitors/vllm_plugin/settings.py;
# CALIBRATION and BANDS are settings too) and the vLLM test and bench tools'. Any other is refused as a typo.
OTHER_VARIABLES = frozenset(
    ENV_PREFIX + name
    for name in (
        "CONFIG",
        "CACHE_DIR",
        "VLLM_PLUGIN",
        "VLLM_ALLOWED_SINKS",
        "VLLM_PUBLISHER_CPUS",
        "VLLM_PYTHON",
        "VLLM_MODEL",
    )
)
DEFAULT = "default"


def _joined(value: Any) -> Any:
    """A YAML list of strings as the comma-separated string the setting holds; anything else unchanged."""
    if not isinstance(value, list):
        return value
    if not all(isinstance(item, str) and item.strip() and "," not in item for item in value):
        raise ValueError("a list here must hold non-empty strings without commas")
    return ",".join(item.strip() for item in value)


CommaList = Annotated[str, BeforeValidator(_joined)]
SecretCommaList = Annotated[SecretStr, BeforeValidator(_joined)]


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None, **bounds: float) -> Any:
    """A setting with its help text, its ``choices`` (if closed) and its ``bounds`` (``ge``, ``gt``, ``le``)."""
    return Field(default=default, description=help, json_schema_extra={"choices": choices}, **bounds)


class Settings(BaseSettings):
    """Everything `sinkwatch serve` can be told. Build it with :func:`load_settings`; a copy with some values
    changed (validated again) with :meth:`replace`."""

    # Sources are merged by resolve_settings, which knows where each value came from; constructing a
    # Settings reads no environment of its own.
    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=True)

    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8000, "port to listen on", ge=0, le=65535)
    workers: int = _setting(
        1, "processes serving the port together (more than 1: openai backend without --reader only)", ge=1
    )
    backend: str = _setting("embedded", "where tokens come from", ("embedded", "openai", "vllm"))
    model: str = _setting("SmolLM2-135M-Instruct", "packaged model name, .gguf file or transformers folder")
    served_model_name: str = _setting("", "name clients use for the model (default: derived from --model)")
    chat_template: str = _setting(
        "", "embedded engine: Jinja chat template file, for a model whose tokenizer has none (as vLLM's flag)"
    )
    max_batch: int = _setting(8, "embedded engine: requests decoded together", ge=1)
    max_queue: int = _setting(64, "embedded engine: requests waiting for a slot before 429", ge=0)
    max_model_len: int = _setting(2048, "embedded engine: prompt plus completion tokens", ge=1)
    default_max_tokens: int = _setting(
        1024,
        "embedded engine: completion limit of a request that names none, within the context (0: the context left)",
        ge=0,
    )
    max_tokens_limit: int = _setting(
        0, "embedded engine: largest max_tokens a request may ask for, 400 above (0: only the context bounds it)", ge=0
    )
    capture: bool = _setting(True, "capture hidden states and run the monitors")
    calibration: str = _setting("", "calibration file (default: the one shipped for the model)")
    await_calibration: bool = _setting(
        False, "serve uncalibrated while the --calibration file does not exist yet; SIGHUP loads it once written"
    )
    bands: str = _setting("", "layer bands, e.g. 'early=4,7;middle=13,17;late=23,27' (default: calibration's)")
    policy: str = _setting("annotate", "what to do with verdicts", ("observe", "annotate", "block", "rescue"))
    record_dir: str = _setting(
        "", "shadow recording: write each monitored generation under observe here, for calibrate --from-traffic"
    )
    record_max_bytes: int = _setting(
        256 * 2**20, "shadow recording: the most the record directory holds (oldest segments deleted)", ge=1
    )
    record_text: bool = _setting(False, "shadow recording: keep each generation's token ids (its text)")
    allow_policy_override: bool = _setting(True, "let requests choose their policy (header or body)")
    holdback_tokens: int = _setting(
        -1,
        "streaming under block/rescue: tokens held back behind generation "
        "(-1: the least that keeps blocked tokens unsent: a loop's longest period, 65 for the shipped calibration)",
        ge=-1,
    )
    block_mode: str = _setting("finish", "block by finish_reason content_filter, or by an error", ("finish", "error"))
    block_at: float = _setting(
        0.0,
        "block/rescue act once stability.risk reaches this probability (0: when the verdict fires); "
        "requests may set their own with the sinkwatch extension's block_at",
        ge=0,
        le=1,
    )
    rescue_attempts: int = _setting(2, "rescue: resampling attempts before falling back to block", ge=0)
    rescue_token_budget: int = _setting(256, "rescue: generated tokens that may be thrown away per request", ge=0)
    rescue_strategy: str = _setting("ngram_bias", "rescue: how to resample from the stable prefix", tuple(STRATEGIES))
    upstreams: CommaList = _setting(
        "", "openai/vllm backends: upstream base URLs, comma-separated, optionally named ('a=http://h1:8000/v1,...')"
    )
    upstream_api_key: SecretStr = _setting(
        SecretStr(""), "API key sent to the upstreams (prefer the environment variable)"
    )
    upstream_connect_timeout: float = _setting(2.0, "seconds to open a connection to an upstream before failover", gt=0)
    upstream_read_timeout: float = _setting(
        300.0,
        "seconds an upstream has for its response head, and for a whole answer when not streaming (or the first "
        "event of a stream)",
        gt=0,
    )
    upstream_event_timeout: float = _setting(
        60.0, "longest wait in seconds between two events of a streamed answer (comments do not count)", gt=0
    )
    upstream_max_response_bytes: int = _setting(
        16 * 1024 * 1024, "largest non-streamed upstream answer relayed (502 above; never buffered past it)", gt=0
    )
    upstream_max_connections: int = _setting(1024, "open connections per upstream, at most", ge=1)
    upstream_health_interval: float = _setting(5.0, "seconds between health checks of each upstream", gt=0)
    upstream_health_timeout: float = _setting(
        5.0, "seconds a whole health check may take before the upstream is down", gt=0
    )
    upstream_continuation: str = _setting(
        "continue_final_message",
        "how rescue continues an accepted prefix on an openai upstream: chat requests end with the prefix as "
        "a partial assistant message (vLLM/SGLang 'continue_final_message'), or rescue is refused ('none')",
        ("continue_final_message", "none"),
    )
    reader: bool = _setting(False, "openai backend: read the streamed text with the local --model to monitor it")
    reader_max_streams: int = _setting(
        4, "openai backend: streams read at once by the reader (others unmonitored)", ge=1
    )
    vllm_stats_bind: str = _setting(
        "tcp://127.0.0.1:0", "vllm backend: ZMQ address where the engine plugin's features arrive (port 0: any free)"
    )
    vllm_stats_address: str = _setting(
        "", "vllm backend: address the vLLM workers connect to for that (default: the bound one; set it for a wildcard)"
    )
    vllm_stats_timeout: float = _setting(
        2.0, "vllm backend: seconds a token waits for its features from the plugin before going on without them", gt=0
    )
    api_keys: SecretCommaList = _setting(
        SecretStr(""),
        "API keys clients must send, comma-separated 'name:key' or 'name:sha256:HEX' (empty: no auth)",
    )
    api_keys_file: str = _setting(
        "", "file of API keys, one 'name:key' or 'name:sha256:HEX' per line (reloaded on change and on SIGHUP)"
    )
    auth_failure_limit: int = _setting(
        10,
        "failed API-key attempts a client address may make per window before every request of it gets 429 (0: off)",
        ge=0,
    )
    auth_failure_window: float = _setting(60.0, "seconds of the window of auth_failure_limit", gt=0)
    rate_limit_rps: float = _setting(0.0, "requests per second allowed per API key (0: unlimited)", ge=0)
    rate_limit_burst: int = _setting(0, "requests a key may send at once above its rate (0: one second's worth)", ge=0)
    rate_limit_tpm: int = _setting(
        0, "prompt plus completion tokens per minute allowed per API key (0: unlimited)", ge=0
    )
    max_request_bytes: int = _setting(4 * 1024 * 1024, "largest request body accepted (413 above)", ge=1)
    http_max_header_bytes: int = _setting(64 * 1024, "largest request head (request line and headers; 431 above)", gt=0)
    http_header_timeout: float = _setting(
        10.0, "seconds a client has to send a request's head, from connecting or from its first byte (408 after)", gt=0
    )
    http_body_timeout: float = _setting(
        60.0, "seconds a client has to send a whole request body once its head arrived (408 after)", gt=0
    )
    http_keepalive_timeout: float = _setting(5.0, "seconds an idle kept-alive client connection stays open", gt=0)
    http_max_connections: int = _setting(
        0, "client connections open at once; more are answered 503 and closed (0: from the file-descriptor limit)", ge=0
    )
    cors_origins: CommaList = _setting("", "origins allowed by CORS, comma-separated, or '*' (empty: CORS off)")
    api_docs: bool = _setting(False, "serve the gateway's own OpenAPI schema and docs: /openapi.json, /docs, /redoc")
    metrics_port: int = _setting(
        0, "serve /metrics on this port only, not on the API port (0: on the API port)", ge=0, le=65535
    )
    drain_delay: float = _setting(
        0.0, "on SIGTERM: seconds /readyz answers 503 while new requests are still served, before the drain", ge=0
    )
    shutdown_timeout: float = _setting(
        30.0, "on SIGTERM, after --drain-delay: seconds in-flight requests get to finish (streams then end)", ge=0
    )
    log_level: str = _setting("info", "log level", ("debug", "info", "warning", "error"))
    log_format: str = _setting("text", "log lines as plain text, or one JSON object per line", ("text", "json"))
    log_content: bool = _setting(
        False, "debugging: log each request's headers and bodies (prompts, completions; credentials redacted)"
    )
    log_content_limit: int = _setting(4096, "log_content: bytes of each body logged, at most", ge=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given: :func:`resolve_settings` reads the YAML file, environment and flags."""
        return (init_settings,)

    @field_validator("*")
    @classmethod
    def _one_of_choices(cls, value: Any, info: ValidationInfo) -> Any:
        choices = _choices(info.field_name)
        if choices and value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    @field_validator("chat_template")
    @classmethod
    def _readable_template(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"chat template file {value} does not exist")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.workers > 1 and (self.backend != "openai" or self.reader):
            raise ValueError(
                "workers > 1 needs the openai backend without --reader: a model or a vLLM stats channel lives in "
                "one process"
            )
        return self

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` applied, validated again (what ``dataclasses.replace`` was)."""
        return type(self)(**{**dict(self), **changes})

    def gate_config(self) -> GateConfig:
        """The gate's part of the settings."""
        return GateConfig(
            default_policy=Policy(self.policy),
            allow_override=self.allow_policy_override,
            holdback_tokens=self.holdback_tokens,
            block_mode=self.block_mode,
            block_at=self.block_at,
            rescue_attempts=self.rescue_attempts,
            rescue_token_budget=self.rescue_token_budget,
            rescue_strategy=self.rescue_strategy,
        )

    def served_name(self) -> str:
        """The model name clients use."""
        from gateway.engine.provision import served_name

        return self.served_model_name or served_name(self.model)


def _choices(name: str) -> tuple[str, ...] | None:
    return (Settings.model_fields[name].json_schema_extra or {}).get("choices")


def flag(name: str) -> str:
    """The command-line flag of setting ``name``."""
    return "--" + name.replace("_", "-")


def _flag_type(annotation: Any) -> type:
    return str if annotation is SecretStr else annotation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults stay unset so that YAML and environment can fill them."""
    parser.add_argument(
        "--config", type=Path, help=f"YAML file of settings (keys as the flags, with underscores) [env {CONFIG_ENV}]"
    )
    for name, info in Settings.model_fields.items():
        default = info.default.get_secret_value() if isinstance(info.default, SecretStr) else info.default
        help_text = f"{info.description} [env {ENV_PREFIX + name.upper()}; default {default!r}]"
        if info.annotation is bool:
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(
                flag(name), type=_flag_type(info.annotation), default=None, choices=_choices(name), help=help_text
            )


@dataclass(frozen=True)
class ResolvedSettings:
    """The settings, and for each the source of its value: ``default``, ``YAML file PATH``,
    ``environment variable NAME`` or ``flag --NAME``."""

    settings: Settings
    sources: dict[str, str]

    def report(self) -> str:
        """The effective configuration as YAML (usable as a ``--config`` file), each value followed by its
        source in a comment; a secret that is set shows as ``**********``."""
        lines = []
        for name, source in self.sources.items():
            value = getattr(self.settings, name)
            if isinstance(value, SecretStr):
                value = "**********" if value.get_secret_value() else ""
            lines.append(f"{name}: {json.dumps(value)}  # {source}")
        return "\n".join(lines)


def resolve_settings(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ResolvedSettings:
    """Merge defaults, YAML, environment and flags into validated settings, remembering each value's source.

    A ValueError names every problem: an unknown key or variable, a value of the wrong type or out of range
    (with its source; a secret's value is never repeated), settings that do not go together.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = dict.fromkeys(Settings.model_fields, DEFAULT)
    config_path = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    if config_path:
        source = f"YAML file {config_path}"
        for name, value in _yaml_values(Path(config_path)).items():
            values[name], sources[name] = value, source
    for variable, value in environ.items():
        if variable.startswith(ENV_PREFIX) and variable not in OTHER_VARIABLES:
            name = _known(variable.removeprefix(ENV_PREFIX).lower(), f"environment variable {variable}")
            values[name], sources[name] = value, f"environment variable {variable}"
    for name, value in vars(args or argparse.Namespace()).items():
        if name in Settings.model_fields and value is not None:
            values[name], sources[name] = value, f"flag {flag(name)}"
    try:
        settings = Settings(**values)
    except ValidationError as invalid:
        raise ValueError(_explained(invalid, sources)) from None
    return ResolvedSettings(settings, sources)


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults, YAML, environment and flags into validated settings (see :func:`resolve_settings`)."""
    return resolve_settings(args, environ).settings


def _yaml_values(path: Path) -> dict[str, Any]:
    """The settings in a YAML file: a mapping whose keys are all setting names (else a ValueError)."""
    loaded = yaml.safe_load(path.read_text())
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"YAML file {path}: expected a mapping of settings, got {type(loaded).__name__}")
    return {_known(str(key), f"YAML file {path}"): value for key, value in loaded.items()}


def _known(name: str, source: str) -> str:
    """``name`` when it is a setting, else a ValueError naming it, its source and the nearest setting."""
    if name in Settings.model_fields:
        return name
    close = difflib.get_close_matches(name, Settings.model_fields, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown setting {name!r} in {source}{hint}")


def _explained(invalid: ValidationError, sources: dict[str, str]) -> str:
    """One line per problem: the setting, what is wrong, the value given (unless secret) and its source."""
    lines = []
    for error in invalid.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if name not in Settings.model_fields:  # settings that do not go together
            lines.append(message)
            continue
        secret = Settings.model_fields[name].annotation is SecretStr
        given = "" if secret else f"got {error['input']!r}, "
        lines.append(f"{name}: {message} ({given}from {sources[name]})")
    return "invalid settings:\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0]

"""Settings: every field is a CLI flag, a ``SINKWATCH_*`` environment variable and a YAML key.

Precedence, lowest first: defaults, the YAML file (``--config``), the environment, the command line.
"""

import argparse
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from gateway.gate.policy import GateConfig, Policy
from gateway.gate.rescue import STRATEGIES

__all__ = ["ENV_PREFIX", "Settings", "add_arguments", "load_settings"]

ENV_PREFIX = "SINKWATCH_"


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None, secret: bool = False) -> Any:
    """A setting; a ``secret`` one never shows in the settings' repr (and so in no log)."""
    return field(default=default, repr=not secret, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """Everything `sinkwatch serve` can be told."""

    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8000, "port to listen on")
    workers: int = _setting(
        1, "processes serving the port together (more than 1: openai backend without --reader only)"
    )
    backend: str = _setting("embedded", "where tokens come from", ("embedded", "openai", "vllm"))
    model: str = _setting("SmolLM2-135M-Instruct", "packaged model name, .gguf file or transformers folder")
    served_model_name: str = _setting("", "name clients use for the model (default: derived from --model)")
    max_batch: int = _setting(8, "embedded engine: requests decoded together")
    max_queue: int = _setting(64, "embedded engine: requests waiting for a slot before 429")
    max_model_len: int = _setting(2048, "embedded engine: prompt plus completion tokens")
    default_max_tokens: int = _setting(
        1024, "embedded engine: completion limit of a request that names none, within the context (0: the context left)"
    )
    max_tokens_limit: int = _setting(
        0, "embedded engine: largest max_tokens a request may ask for, 400 above (0: only the context bounds it)"
    )
    capture: bool = _setting(True, "capture hidden states and run the monitors")
    calibration: str = _setting("", "calibration file (default: the one shipped for the model)")
    bands: str = _setting("", "layer bands, e.g. 'early=4,7;middle=13,17;late=23,27' (default: calibration's)")
    policy: str = _setting("annotate", "what to do with verdicts", ("observe", "annotate", "block", "rescue"))
    allow_policy_override: bool = _setting(True, "let requests choose their policy (header or body)")
    holdback_tokens: int = _setting(
        -1,
        "streaming under block/rescue: tokens held back behind generation "
        "(-1: the calibration's persistence - 1, the least that keeps blocked tokens unsent)",
    )
    block_mode: str = _setting("finish", "block by finish_reason content_filter, or by an error", ("finish", "error"))
    block_at: float = _setting(
        0.0,
        "block/rescue act once stability.risk reaches this probability (0: when the verdict fires); "
        "requests may set their own with the sinkwatch extension's block_at",
    )
    rescue_attempts: int = _setting(2, "rescue: resampling attempts before falling back to block")
    rescue_token_budget: int = _setting(256, "rescue: generated tokens that may be thrown away per request")
    rescue_strategy: str = _setting("combined", "rescue: how to resample from the stable prefix", tuple(STRATEGIES))
    upstreams: str = _setting(
        "", "openai/vllm backends: upstream base URLs, comma-separated, optionally named ('a=http://h1:8000/v1,...')"
    )
    upstream_api_key: str = _setting("", "API key sent to the upstreams (prefer the environment variable)", secret=True)
    upstream_connect_timeout: float = _setting(2.0, "seconds to open a connection to an upstream before failover")
    upstream_read_timeout: float = _setting(
        300.0,
        "seconds an upstream has for its response head, and for a whole answer when not streaming (or the first "
        "event of a stream)",
    )
    upstream_event_timeout: float = _setting(
        60.0, "longest wait in seconds between two events of a streamed answer (comments do not count)"
    )
    upstream_max_response_bytes: int = _setting(
        16 * 1024 * 1024, "largest non-streamed upstream answer relayed (502 above; never buffered past it)"
    )
    upstream_max_connections: int = _setting(1024, "open connections per upstream, at most")
    upstream_health_interval: float = _setting(5.0, "seconds between health checks of each upstream")
    upstream_health_timeout: float = _setting(5.0, "seconds a whole health check may take before the upstream is down")
    upstream_continuation: str = _setting(
        "continue_final_message",
        "how rescue continues an accepted prefix on an openai upstream: chat requests end with the prefix as "
        "a partial assistant message (vLLM/SGLang 'continue_final_message'), or rescue is refused ('none')",
        ("continue_final_message", "none"),
    )
    reader: bool = _setting(False, "openai backend: read the streamed text with the local --model to monitor it")
    reader_max_streams: int = _setting(4, "openai backend: streams read at once by the reader (others unmonitored)")
    vllm_stats_bind: str = _setting(
        "tcp://127.0.0.1:0", "vllm backend: ZMQ address where the engine plugin's features arrive (port 0: any free)"
    )
    vllm_stats_address: str = _setting(
        "", "vllm backend: address the vLLM workers connect to for that (default: the bound one; set it for a wildcard)"
    )
    vllm_stats_timeout: float = _setting(
        2.0, "vllm backend: seconds a token waits for its features from the plugin before going on without them"
    )
    api_keys: str = _setting(
        "", "API keys clients must send, comma-separated 'name:key' or 'name:sha256:HEX' (empty: no auth)", secret=True
    )
    api_keys_file: str = _setting("", "file of API keys, one 'name:key' or 'name:sha256:HEX' per line")
    auth_failure_limit: int = _setting(
        10, "failed API-key attempts a client address may make per window before every request of it gets 429 (0: off)"
    )
    auth_failure_window: float = _setting(60.0, "seconds of the window of auth_failure_limit")
    rate_limit_rps: float = _setting(0.0, "requests per second allowed per API key (0: unlimited)")
    rate_limit_burst: int = _setting(0, "requests a key may send at once above its rate (0: one second's worth)")
    max_request_bytes: int = _setting(4 * 1024 * 1024, "largest request body accepted (413 above)")
    http_max_header_bytes: int = _setting(64 * 1024, "largest request head (request line and headers; 431 above)")
    http_header_timeout: float = _setting(
        10.0, "seconds a client has to send a request's head, from connecting or from its first byte (408 after)"
    )
    http_body_timeout: float = _setting(
        60.0, "seconds a client has to send a whole request body once its head arrived (408 after)"
    )
    http_keepalive_timeout: float = _setting(5.0, "seconds an idle kept-alive client connection stays open")
    http_max_connections: int = _setting(
        0, "client connections open at once; more are answered 503 and closed (0: from the file-descriptor limit)"
    )
    cors_origins: str = _setting("", "origins allowed by CORS, comma-separated, or '*' (empty: CORS off)")
    api_docs: bool = _setting(False, "serve the gateway's own OpenAPI schema and docs: /openapi.json, /docs, /redoc")
    metrics_port: int = _setting(0, "serve /metrics on this port only, not on the API port (0: on the API port)")
    log_level: str = _setting("info", "log level", ("debug", "info", "warning", "error"))
    log_format: str = _setting("text", "log lines as plain text, or one JSON object per line", ("text", "json"))
    log_content: bool = _setting(
        False, "debugging: log each request's headers and bodies (prompts, completions; credentials redacted)"
    )
    log_content_limit: int = _setting(4096, "log_content: bytes of each body logged, at most")

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


_POSITIVE = (
    "http_max_header_bytes",
    "http_header_timeout",
    "http_body_timeout",
    "http_keepalive_timeout",
    "upstream_read_timeout",
    "upstream_event_timeout",
    "upstream_max_response_bytes",
    "upstream_health_timeout",
    "auth_failure_window",
)
_NOT_NEGATIVE = ("default_max_tokens", "max_tokens_limit", "auth_failure_limit", "http_max_connections")


def _validated(settings: Settings) -> Settings:
    for f in fields(Settings):
        choices = f.metadata.get("choices")
        if choices and getattr(settings, f.name) not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}, not {getattr(settings, f.name)!r}")
    if settings.workers < 1:
        raise ValueError(f"workers must be at least 1, not {settings.workers}")
    for name in _POSITIVE:
        if not getattr(settings, name) > 0:
            raise ValueError(f"{name} must be positive, not {getattr(settings, name)!r}")
    for name in _NOT_NEGATIVE:
        if getattr(settings, name) < 0:
            raise ValueError(f"{name} must be 0 or more, not {getattr(settings, name)!r}")
    if not 0 <= settings.block_at <= 1:
        raise ValueError(f"block_at is a probability between 0 and 1, not {settings.block_at}")
    if settings.workers > 1 and (settings.backend != "openai" or settings.reader):
        raise ValueError(
            "workers > 1 needs the openai backend without --reader: a model or a vLLM stats channel lives in "
            "one process"
        )
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

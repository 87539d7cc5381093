"""Settings: defaults < YAML < environment < flags; every field reachable all three ways."""

import argparse
from dataclasses import fields

import pytest

from gateway.config import ENV_PREFIX, Settings, add_arguments, load_settings


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_no_flags_serves_the_embedded_default_on_loopback():
    settings = load_settings(_parse([]), environ={})
    assert (settings.host, settings.port, settings.backend) == ("127.0.0.1", 8000, "embedded")
    assert settings.served_name() == "SmolLM2-135M-Instruct"


def test_precedence_yaml_then_env_then_flags(tmp_path):
    config = tmp_path / "sinkwatch.yaml"
    config.write_text("port: 9001\nmax_batch: 3\ncapture: false\n")
    environ = {f"{ENV_PREFIX}PORT": "9002", f"{ENV_PREFIX}MAX_BATCH": "5"}
    settings = load_settings(_parse(["--config", str(config), "--port", "9003"]), environ=environ)
    assert settings.port == 9003
    assert settings.max_batch == 5
    assert settings.capture is False


def test_every_setting_has_a_flag_and_an_env_var():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    for f in fields(Settings):
        assert "--" + f.name.replace("_", "-") in flags
        env_value = "1" if f.type in (int, "int") else None
        if env_value is not None:
            assert getattr(load_settings(None, environ={ENV_PREFIX + f.name.upper(): env_value}), f.name) == 1


def test_boolean_environment_values():
    assert load_settings(None, environ={f"{ENV_PREFIX}CAPTURE": "off"}).capture is False
    with pytest.raises(ValueError, match="not a boolean"):
        load_settings(None, environ={f"{ENV_PREFIX}CAPTURE": "maybe"})


def test_unknown_yaml_key_and_bad_choice_are_rejected(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("prot: 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        load_settings(_parse(["--config", str(config)]), environ={})
    with pytest.raises(ValueError, match="policy must be one of"):
        load_settings(None, environ={f"{ENV_PREFIX}POLICY": "panic"})


def test_several_workers_only_for_a_backend_without_a_model():
    openai = {f"{ENV_PREFIX}BACKEND": "openai", f"{ENV_PREFIX}WORKERS": "4"}
    assert load_settings(None, environ=openai).workers == 4
    with pytest.raises(ValueError, match="workers must be at least 1"):
        load_settings(None, environ={f"{ENV_PREFIX}WORKERS": "0"})
    for backend, reader in (("embedded", "off"), ("vllm", "off"), ("openai", "on")):
        environ = {**openai, f"{ENV_PREFIX}BACKEND": backend, f"{ENV_PREFIX}READER": reader}
        with pytest.raises(ValueError, match="workers > 1 needs the openai backend without --reader"):
            load_settings(None, environ=environ)


@pytest.mark.parametrize("name", ["http_header_timeout", "http_max_header_bytes", "upstream_event_timeout"])
def test_limits_and_deadlines_must_be_positive(name):
    with pytest.raises(ValueError, match=f"{name} must be positive"):
        load_settings(None, environ={f"{ENV_PREFIX}{name.upper()}": "0"})
    with pytest.raises(ValueError, match="http_max_connections must be 0"):
        load_settings(None, environ={f"{ENV_PREFIX}HTTP_MAX_CONNECTIONS": "-1"})

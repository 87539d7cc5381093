"""Settings: defaults < YAML < environment < flags; every field reachable all three ways; values checked
for type and range, unknown keys refused, each error naming its source; secrets masked."""

import argparse
import subprocess
import sys

import pytest

from gateway.config import ENV_PREFIX, Settings, add_arguments, load_settings, resolve_settings


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def _yaml(tmp_path, text: str) -> str:
    config = tmp_path / "sinkwatch.yaml"
    config.write_text(text)
    return str(config)


def test_no_flags_serves_the_embedded_default_on_loopback():
    settings = load_settings(_parse([]), environ={})
    assert (settings.host, settings.port, settings.backend) == ("127.0.0.1", 8000, "embedded")
    assert settings.served_name() == "SmolLM2-135M-Instruct"


def test_precedence_yaml_then_env_then_flags(tmp_path):
    config = _yaml(tmp_path, "port: 9001\nmax_batch: 3\ncapture: false\nmax_queue: 7\n")
    environ = {f"{ENV_PREFIX}PORT": "9002", f"{ENV_PREFIX}MAX_BATCH": "5"}
    resolved = resolve_settings(_parse(["--config", config, "--port", "9003"]), environ=environ)
    settings = resolved.settings
    assert (settings.port, settings.max_batch, settings.capture, settings.max_queue) == (9003, 5, False, 7)
    assert resolved.sources["port"] == "flag --port"
    assert resolved.sources["max_batch"] == f"environment variable {ENV_PREFIX}MAX_BATCH"
    assert resolved.sources["capture"] == f"YAML file {config}"
    assert resolved.sources["host"] == "default"


def test_the_config_file_may_come_from_the_environment(tmp_path):
    config = _yaml(tmp_path, "port: 9001\n")
    assert load_settings(None, environ={f"{ENV_PREFIX}CONFIG": config}).port == 9001


def test_every_setting_has_a_flag_and_an_env_var():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    for name, info in Settings.model_fields.items():
        assert "--" + name.replace("_", "-") in flags
        if info.annotation is int:
            assert getattr(load_settings(None, environ={ENV_PREFIX + name.upper(): "1"}), name) == 1


def test_boolean_environment_values():
    assert load_settings(None, environ={f"{ENV_PREFIX}CAPTURE": "off"}).capture is False
    with pytest.raises(ValueError, match=f"capture: .*valid boolean.*'maybe'.*{ENV_PREFIX}CAPTURE"):
        load_settings(None, environ={f"{ENV_PREFIX}CAPTURE": "maybe"})


def test_a_fractional_port_in_yaml_is_an_error_naming_the_file(tmp_path):
    config = _yaml(tmp_path, "port: 80.9\n")
    with pytest.raises(ValueError, match=f"port: .*fractional part.*80.9.*YAML file {config}"):
        load_settings(_parse(["--config", config]), environ={})


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("PORT", "70000", "less than or equal to 65535"),
        ("WORKERS", "0", "greater than or equal to 1"),
        ("UPSTREAM_READ_TIMEOUT", "0", "greater than 0"),
        ("RATE_LIMIT_RPS", "-1", "greater than or equal to 0"),
        ("SHUTDOWN_TIMEOUT", "-5", "greater than or equal to 0"),
        ("MAX_BATCH", "many", "valid integer"),
    ],
)
def test_values_out_of_range_or_of_the_wrong_type_are_errors(variable, value, problem):
    with pytest.raises(ValueError, match=f"{problem}.*environment variable {ENV_PREFIX}{variable}"):
        load_settings(None, environ={ENV_PREFIX + variable: value})


def test_a_flag_out_of_range_is_named():
    with pytest.raises(ValueError, match=r"metrics_port: .*65535.*flag --metrics-port"):
        load_settings(_parse(["--metrics-port", "65536"]), environ={})


def test_unknown_keys_are_refused_naming_the_key_and_where_it_came_from(tmp_path):
    config = _yaml(tmp_path, "prot: 1\n")
    with pytest.raises(ValueError, match=f"unknown setting 'prot' in YAML file {config} \\(did you mean 'port'"):
        load_settings(_parse(["--config", config]), environ={})
    with pytest.raises(ValueError, match=f"unknown setting 'max_bacth' in environment variable {ENV_PREFIX}MAX_BACTH"):
        load_settings(None, environ={f"{ENV_PREFIX}MAX_BACTH": "2"})
    with pytest.raises(SystemExit):  # argparse: "unrecognized arguments"
        _parse(["--prot", "1"])


def test_other_sinkwatch_variables_are_not_settings_but_allowed():
    environ = {f"{ENV_PREFIX}CACHE_DIR": "/tmp/x", f"{ENV_PREFIX}VLLM_PLUGIN": "0", "OTHER": "1"}
    assert load_settings(None, environ=environ) == Settings()


def test_a_yaml_that_is_no_mapping_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="expected a mapping"):
        load_settings(_parse(["--config", _yaml(tmp_path, "- port\n")]), environ={})


def test_yaml_lists_of_keys_upstreams_and_origins_are_joined_with_commas(tmp_path):
    config = _yaml(
        tmp_path,
        "api_keys: [a:sk-a, b:sk-b]\nupstreams:\n  - a=http://h1:8000/v1\n  - b=http://h2:8000/v1\n"
        "cors_origins: ['https://x.example']\n",
    )
    settings = load_settings(_parse(["--config", config]), environ={})
    assert settings.api_keys.get_secret_value() == "a:sk-a,b:sk-b"
    assert settings.upstreams == "a=http://h1:8000/v1,b=http://h2:8000/v1"
    assert settings.cors_origins == "https://x.example"


def test_a_yaml_list_with_a_comma_or_not_of_strings_is_an_error_that_does_not_echo_secrets(tmp_path):
    config = _yaml(tmp_path, "api_keys: ['a:sk-a,b:sk-b']\n")
    with pytest.raises(ValueError, match="api_keys: a list here must hold") as refused:
        load_settings(_parse(["--config", config]), environ={})
    assert "sk-a" not in str(refused.value)
    with pytest.raises(ValueError, match="upstreams"):
        load_settings(_parse(["--config", _yaml(tmp_path, "upstreams: [1, 2]\n")]), environ={})


def test_bad_choice_is_rejected_with_its_source():
    with pytest.raises(ValueError, match=f"policy: must be one of .*'panic'.*{ENV_PREFIX}POLICY"):
        load_settings(None, environ={f"{ENV_PREFIX}POLICY": "panic"})


def test_several_workers_only_for_a_backend_without_a_model():
    openai = {f"{ENV_PREFIX}BACKEND": "openai", f"{ENV_PREFIX}WORKERS": "4"}
    assert load_settings(None, environ=openai).workers == 4
    for backend, reader in (("embedded", "off"), ("vllm", "off"), ("openai", "on")):
        environ = {**openai, f"{ENV_PREFIX}BACKEND": backend, f"{ENV_PREFIX}READER": reader}
        with pytest.raises(ValueError, match="workers > 1 needs the openai backend without --reader"):
            load_settings(None, environ=environ)


def test_a_chat_template_file_must_exist_and_the_error_names_its_source(tmp_path):
    with pytest.raises(ValueError, match=f"chat_template: .*does not exist.*{ENV_PREFIX}CHAT_TEMPLATE"):
        load_settings(None, environ={f"{ENV_PREFIX}CHAT_TEMPLATE": str(tmp_path / "absent.jinja")})
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages[0]['content'] }}")
    assert _parse(["--chat-template", str(template)]).chat_template == str(template)


def test_secrets_are_secret_strings_masked_in_repr():
    settings = Settings(api_keys="a:sk-in-settings", upstream_api_key="sk-upstream")
    assert "sk-in-settings" not in repr(settings) and "sk-upstream" not in repr(settings)
    assert settings.upstream_api_key.get_secret_value() == "sk-upstream"


def test_replace_validates_the_copy():
    settings = Settings().replace(port=9, backend="openai")
    assert (settings.port, settings.backend, settings.host) == (9, "openai", "127.0.0.1")
    with pytest.raises(ValueError, match="port"):
        Settings().replace(port=-1)


def test_sinkwatch_config_prints_each_value_with_its_source_and_masks_secrets(tmp_path):
    config = _yaml(tmp_path, "max_batch: 3\n")
    environ = {f"{ENV_PREFIX}UPSTREAM_API_KEY": "sk-very-secret", "PATH": "/usr/bin:/bin"}
    printed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "--config", config, "--port", "9003"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = printed.splitlines()
    assert "port: 9003  # flag --port" in lines
    assert f"max_batch: 3  # YAML file {config}" in lines
    assert f'upstream_api_key: "**********"  # environment variable {ENV_PREFIX}UPSTREAM_API_KEY' in lines
    assert 'api_keys: ""  # default' in lines
    assert "sk-very-secret" not in printed
    assert len(lines) == len(Settings.model_fields)


def test_sinkwatch_config_refuses_a_typo_with_an_error():
    refused = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config"],
        env={f"{ENV_PREFIX}PROT": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert f"unknown setting 'prot' in environment variable {ENV_PREFIX}PROT" in refused.stderr


@pytest.mark.parametrize("name", ["http_header_timeout", "http_max_header_bytes", "upstream_event_timeout"])
def test_limits_and_deadlines_must_be_positive(name):
    with pytest.raises(ValueError, match=f"{name}: Input should be greater than 0"):
        load_settings(None, environ={f"{ENV_PREFIX}{name.upper()}": "0"})
    with pytest.raises(ValueError, match="http_max_connections: Input should be greater than or equal to 0"):
        load_settings(None, environ={f"{ENV_PREFIX}HTTP_MAX_CONNECTIONS": "-1"})

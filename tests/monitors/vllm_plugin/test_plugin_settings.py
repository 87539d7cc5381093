"""The plugin's settings come from the vLLM processes' environment."""

import ipaddress

from monitors.vllm_plugin.settings import PluginSettings


def test_the_plugin_is_on_by_default_and_allows_only_local_and_private_sinks():
    settings = PluginSettings.from_env({})
    assert settings.enabled
    assert ipaddress.ip_network("127.0.0.0/8") in settings.allowed_sinks
    assert not any(ipaddress.ip_address("8.8.8.8") in net for net in settings.allowed_sinks)


def test_it_can_be_turned_off():
    for value in ("0", "false", "off", "no"):
        assert not PluginSettings.from_env({"SINKWATCH_VLLM_PLUGIN": value}).enabled


def test_calibration_bands_and_sinks_mean_what_they_mean_for_the_gateway():
    settings = PluginSettings.from_env(
        {
            "SINKWATCH_CALIBRATION": "/etc/cal.json",
            "SINKWATCH_BANDS": "late=20,25",
            "SINKWATCH_VLLM_ALLOWED_SINKS": "10.1.0.0/16, 127.0.0.1/32",
        }
    )
    assert settings.calibration == "/etc/cal.json" and settings.bands == "late=20,25"
    assert settings.allowed_sinks == (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("127.0.0.1/32"))


def test_awaiting_the_calibration_is_off_unless_asked():
    assert not PluginSettings.from_env({}).await_calibration
    assert not PluginSettings.from_env({"SINKWATCH_AWAIT_CALIBRATION": ""}).await_calibration
    assert PluginSettings.from_env({"SINKWATCH_AWAIT_CALIBRATION": "1"}).await_calibration
    assert PluginSettings.from_env({"SINKWATCH_VLLM_PLUGIN": ""}).enabled

"""The plugin's configuration, from the environment of the vLLM processes.

``SINKWATCH_CALIBRATION`` and ``SINKWATCH_BANDS`` mean what they mean for ``sinkwatch serve``: set them
to the same values on the gateway and on vLLM (messages carry a profile, and a gateway drops features
computed with another one).
"""

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Network", "PluginSettings"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Where a worker may send statistics unless told otherwise: this host and private networks (a cluster's
# pod and service ranges). The sink address comes from the request, so it must not reach anywhere.
DEFAULT_ALLOWED_SINKS = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


@dataclass(frozen=True)
class PluginSettings:
    """``SINKWATCH_VLLM_PLUGIN`` (on unless 0/false/off), calibration, whether to await it
    (``SINKWATCH_AWAIT_CALIBRATION``: a calibration file not written yet is taken when it appears, the model
    monitored uncalibrated until then), bands, the allowed sink networks, and the publisher thread's CPU cores
    (``SINKWATCH_VLLM_PUBLISHER_CPUS``, see ``placement``)."""

    enabled: bool = True
    calibration: str = ""
    await_calibration: bool = False
    bands: str = ""
    allowed_sinks: tuple[Network, ...] = ()
    publisher_cpus: str = "auto"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "PluginSettings":
        env = os.environ if environ is None else environ
        allowed = env.get("SINKWATCH_VLLM_ALLOWED_SINKS", DEFAULT_ALLOWED_SINKS)
        return cls(
            enabled=_flag(env.get("SINKWATCH_VLLM_PLUGIN") or "1"),
            calibration=env.get("SINKWATCH_CALIBRATION", ""),
            await_calibration=_flag(env.get("SINKWATCH_AWAIT_CALIBRATION") or "0"),
            bands=env.get("SINKWATCH_BANDS", ""),
            allowed_sinks=tuple(ipaddress.ip_network(n.strip()) for n in allowed.split(",") if n.strip()),
            publisher_cpus=env.get("SINKWATCH_VLLM_PUBLISHER_CPUS", "auto"),
        )


def _flag(value: str) -> bool:
    return value.strip().lower() not in {"0", "false", "no", "off"}

"""Evaluation, calibration and benchmarks of sinkwatch: the floor above the gateway and the monitors.

Imports flow one way: ``lab`` may import ``gateway`` and ``monitors``; neither imports ``lab`` (the CLI loads
its commands lazily by module name).
"""

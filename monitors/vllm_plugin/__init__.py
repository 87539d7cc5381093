"""sinkwatch's vLLM plugin: decode-time hidden-state statistics from inside the engine.

Installed with ``pip install sinkwatch[vllm]`` in vLLM's environment, it is loaded by vLLM in every
process through the ``vllm.general_plugins`` entry point (:func:`monitors.vllm_plugin.plugin.register`).
It imports only monitors, numpy, torch, vLLM and vLLM's own dependency pyzmq, never gateway code.
"""

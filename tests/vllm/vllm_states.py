"""Run by vLLM's interpreter (``SINKWATCH_VLLM_PYTHON``): greedy-decode a prompt with vLLM in this process
(plugin on, vLLM's default compilation) and save what the plugin's tap reads at each sampling step.

``python tests/vllm/vllm_states.py MODEL_DIR OUT.npz PROMPT MAX_TOKENS`` writes ``prompt_ids``,
``token_ids`` (the greedy completion), ``layers`` (decoder layers whose outputs the auxiliary slots hold),
``states`` (``[steps, layers, d]``: the auxiliary states at each step's sampling position, float32),
``model_class`` (the class vLLM served) and ``compilation_mode``.
"""

import os
import sys
from typing import Any

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the worker in this process, so its runner can be read

import numpy as np
import torch
from vllm import LLM, SamplingParams
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

captured: list[np.ndarray] = []
served: dict[str, Any] = {}


def _record_then_sample(sample_tokens: Any) -> Any:
    def wrapped(self: GPUModelRunner, grammar_output: Any) -> Any:
        state = self.execute_model_state
        if state is not None and state.aux_hidden_states is not None and self.input_batch.num_reqs == 1:
            position = int(self.query_start_loc.np[1]) - 1
            captured.append(torch.stack([aux[position] for aux in state.aux_hidden_states]).float().numpy())
            model = self.get_model()
            served["model_class"] = f"{type(model).__module__}:{type(model).__qualname__}"
            served["layers"] = [slot - 1 for slot in model.model.aux_hidden_state_layers]
            served["compilation_mode"] = self.vllm_config.compilation_config.mode.name
        return sample_tokens(self, grammar_output)

    return wrapped


def main(model_dir: str, out: str, prompt: str, max_tokens: int) -> None:
    GPUModelRunner.sample_tokens = _record_then_sample(GPUModelRunner.sample_tokens)
    llm = LLM(model=model_dir, dtype="float32", max_model_len=512, seed=0)
    prompt_ids = llm.get_tokenizer().encode(prompt)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    completion = llm.generate([{"prompt_token_ids": prompt_ids}], params)[0].outputs[0]
    np.savez(
        out,
        prompt_ids=np.array(prompt_ids),
        token_ids=np.array(completion.token_ids),
        states=np.stack(captured),
        layers=np.array(served["layers"]),
        model_class=np.array(served["model_class"]),
        compilation_mode=np.array(served["compilation_mode"]),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

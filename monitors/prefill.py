"""Prefill risk: before the first token, the probability that this request's answer will loop.

Two parts, combined by a logistic regression fitted on the tune split of a labelled corpus:

- the **prompt**: a linear probe on the residual stream at the prompt's last position (the states the
  engine and the vLLM plugin capture anyway to sample the first token), at a few captured layers;
- the **request's sampling**: what a client sets that pushes a model to repeat itself (a repetition
  penalty below 1, negative frequency or presence penalties, a positive logit bias), greedy decoding
  and the length allowed. A prompt alone cannot see these, and they cause most loops in traffic.

The combiner is fitted on **out-of-fold** prompt scores (each tune prompt scored by a probe fitted without
it), so it weighs the prompt part by what the probe is worth on prompts it has not seen.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from monitors.probe import LinearProbe, train_probe

__all__ = [
    "PREFILL_FEATURE",
    "SAMPLING_FEATURES",
    "PrefillProbe",
    "RequestSampling",
    "fit_logistic",
    "fit_prefill_probe",
    "grouped_folds",
    "out_of_fold_prompt_scores",
]

# The name of the prompt probe's score in the first token's StepFeatures.
PREFILL_FEATURE = "prefill.prompt"
SAMPLING_FEATURES = (
    "repetition_penalty_below_1",
    "negative_frequency_penalty",
    "negative_presence_penalty",
    "positive_logit_bias",
    "greedy",
    "log2_max_tokens",
)


@dataclass(frozen=True)
class RequestSampling:
    """The sampling parameters of a request that the prior reads (OpenAI's fields, vLLM's repetition penalty)."""

    temperature: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_logit_bias: float = 0.0
    max_tokens: int = 256

    def features(self) -> np.ndarray:
        """The prior's inputs, in ``SAMPLING_FEATURES`` order: how far each inducer is pushed (0 when unset)."""
        return np.array(
            [
                max(0.0, 1.0 - self.repetition_penalty),
                max(0.0, -self.frequency_penalty),
                max(0.0, -self.presence_penalty),
                max(0.0, self.max_logit_bias),
                float(self.temperature == 0),
                math.log2(max(1, self.max_tokens)),
            ]
        )


@dataclass(frozen=True)
class PrefillProbe:
    """``risk = sigmoid(bias + prompt_weight · prompt.score(states) + sampling_weights · sampling features)``.

    ``alarm_level``: the risk at which the detector's verdict fires before the first token (chosen on tune
    at the detector's own false alarms); None: the risk is reported and exported, never acted on.
    """

    prompt: LinearProbe
    prompt_weight: float
    sampling_weights: tuple[float, ...]
    bias: float
    alarm_level: float | None = None

    def alarms(self, risk: float) -> bool:
        """Whether a request of this prefill risk fires the verdict before its first token."""
        return self.alarm_level is not None and risk >= self.alarm_level

    def prompt_score(self, states: np.ndarray) -> float:
        """The prompt part from the last prompt position's states ``[len(prompt.layers), d]``."""
        return float(self.prompt.score(np.asarray(states)[None])[0])

    def logit(self, prompt_score: float | None, sampling: RequestSampling | None) -> float:
        """The combined log-odds; a missing part contributes nothing (the sampling prior alone, or the prompt)."""
        value = self.bias
        if prompt_score is not None:
            value += self.prompt_weight * prompt_score
        if sampling is not None:
            value += float(np.dot(self.sampling_weights, sampling.features()))
        return value

    def risk(self, prompt_score: float | None, sampling: RequestSampling | None) -> float:
        """The probability that the request loops."""
        return _sigmoid(self.logit(prompt_score, sampling))

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "prompt": self.prompt.to_dict(),
            "prompt_weight": round(self.prompt_weight, 6),
            "sampling_features": list(SAMPLING_FEATURES),
            "sampling_weights": [round(w, 6) for w in self.sampling_weights],
            "bias": round(self.bias, 6),
            "alarm_level": self.alarm_level,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "PrefillProbe":
        """Inverse of :meth:`to_dict`; a file written for other sampling features is refused."""
        if tuple(data["sampling_features"]) != SAMPLING_FEATURES:
            raise ValueError(f"prefill_probe: sampling features {data['sampling_features']} != {SAMPLING_FEATURES}")
        return cls(
            prompt=LinearProbe.from_dict(data["prompt"]),
            prompt_weight=float(data["prompt_weight"]),
            sampling_weights=tuple(float(w) for w in data["sampling_weights"]),
            bias=float(data["bias"]),
            alarm_level=data.get("alarm_level"),
        )


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (the intercept is not penalised).

    Returns ``(weights, bias)``. Small problems only: one ``p × p`` solve per iteration.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    design = np.hstack([x, np.ones((len(y), 1))])
    penalty = l2 * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0
    theta = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = _sigmoid(design @ theta)
        gradient = design.T @ (p - y) + penalty @ theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def grouped_folds(groups: Sequence[str], folds: int) -> np.ndarray:
    """A fold number per item, every item of a group (a prompt) in the same fold, groups dealt in sorted order."""
    names = sorted(set(groups))
    fold_of = {name: i % folds for i, name in enumerate(names)}
    return np.array([fold_of[g] for g in groups])


def _prompt_probe(states: np.ndarray, labels: np.ndarray, layers: Sequence[int], l2: float) -> LinearProbe:
    return train_probe([s[None] for s in states], [np.array([y], dtype=float) for y in labels], layers, l2, 0)


def out_of_fold_prompt_scores(
    states: np.ndarray,
    labels: np.ndarray,
    fit_rows: np.ndarray,
    groups: Sequence[str],
    layers: Sequence[int],
    l2: float,
    folds: int,
) -> np.ndarray:
    """Every item's prompt score from a probe fitted (on ``fit_rows`` only) without its group."""
    fold = grouped_folds(groups, folds)
    scores = np.empty(len(labels))
    for k in range(folds):
        held = fold == k
        probe = _prompt_probe(states[fit_rows & ~held], labels[fit_rows & ~held], layers, l2)
        scores[held] = probe.score(states[held])
    return scores


def fit_prefill_probe(
    states: np.ndarray,
    labels: np.ndarray,
    sampling: Sequence[RequestSampling],
    groups: Sequence[str],
    layers: Sequence[int],
    prompt_rows: np.ndarray | None = None,
    l2: float = 10.0,
    combiner_l2: float = 1.0,
    folds: int = 5,
) -> PrefillProbe:
    """Fit the prefill probe on generations: prompt states ``[n, len(layers), d]``, 0/1 loop labels, each
    generation's sampling, and its prompt id (``groups``, for the out-of-fold scores).

    The prompt probe is fitted on ``prompt_rows`` (default: all), e.g. the generations without a client
    inducer, so that it learns what in a prompt leads to a loop rather than which prompts were sent with an
    inducer; the combiner is fitted on every generation.
    """
    labels = np.asarray(labels, dtype=float)
    rows = np.ones(len(labels), dtype=bool) if prompt_rows is None else np.asarray(prompt_rows, dtype=bool)
    oof = out_of_fold_prompt_scores(states, labels, rows, groups, layers, l2, folds)
    design = np.column_stack([oof, np.stack([s.features() for s in sampling])])
    weights, bias = fit_logistic(design, labels, combiner_l2)
    prompt = _prompt_probe(states[rows], labels[rows], layers, l2)
    return PrefillProbe(prompt, float(weights[0]), tuple(float(w) for w in weights[1:]), bias)

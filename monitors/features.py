"""Per-token features from captured hidden states, over a sliding window of the generation.

One ``FeatureExtractor`` per generation. It keeps, for every captured layer, a ring of the last
``window`` residual-stream states and their Gram matrix, updated with one dot product per layer per
token, so each step costs O(layers × window × d) plus O(layers × window²).

Features (``<band>.`` prefix = mean over the band's layers):

- ``entropy``: next-token entropy (nats), free from the logits;
- ``<band>.pr`` / ``pr_raw`` / ``pr_clip``: participation ratio of the window, rows normalised / raw /
  rows normalised after removing the model's outlier dimensions (calibrated per layer);
- ``<band>.eff_rank``: effective rank ``exp(H(σ/Σσ))`` of the row-normalised window, at the band's last
  layer only (it needs an eigendecomposition per layer, the one costly step);
- ``<band>.cosine`` / ``cosine_clip``: cosine of consecutive states (full / outlier dimensions removed);
- ``<band>.drift``: cosine of the state with the model's mean state (needs calibrated mean states);
- ``<band>.recurrence``: the largest cosine between the state and any earlier state of the window but the
  previous one: how closely the trajectory revisits where it has been (loops revisit);
- ``<band>.pr_novel``: participation ratio of the window's states that do not recur (needs calibrated
  recurrence levels; absent while too few states are novel): rank exhaustion apart from loops, see
  :mod:`monitors.rank_exhaustion`;
- ``path``: inference work, the residual stream's path length across the captured layers
  ``Σ‖h[l_{i+1}] − h[l_i]‖`` relative to the norm of the last captured state;
- ``probe``: the score of a calibrated linear probe on a few captured layers (when one is given).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from monitors.bands import LayerBand, captured_layers
from monitors.prefill import PREFILL_FEATURE
from monitors.probe import LinearProbe
from monitors.rank_exhaustion import NOVEL_PR, novel_participation_ratios
from monitors.spectral import centred_grams, effective_ranks, participation_ratios, unit_grams

__all__ = ["FeatureExtractor", "StepFeatures"]

_EPS = 1e-12
# Tokens a per-layer metric needs before it exists: a previous state (cosine), one more (recurrence).
_NEEDS_TOKENS = {"cosine": 1, "cosine_clip": 1, "recurrence": 2}
_MOST_TOKENS_NEEDED = max(_NEEDS_TOKENS.values())


@dataclass(slots=True)
class StepFeatures:
    """What the monitors know about one generated token: flat ``name -> value`` features.

    Names are ``entropy`` and ``<band>.<metric>`` (``late.pr``, ``middle.cosine``...). ``window`` is how many
    tokens the window statistics cover (they are only comparable to calibration once it is full).
    """

    index: int
    token_id: int
    window: int
    values: dict[str, float] = field(default_factory=dict)

    def to_wire(self) -> dict:
        """A JSON-ready form, for transports between processes."""
        return {"i": self.index, "t": self.token_id, "w": self.window, "v": self.values}

    @classmethod
    def from_wire(cls, data: Mapping) -> "StepFeatures":
        """Inverse of :meth:`to_wire`."""
        return cls(index=int(data["i"]), token_id=int(data["t"]), window=int(data["w"]), values=dict(data["v"]))


class FeatureExtractor:
    """Turns each generated token's captured states into :class:`StepFeatures` for one generation."""

    def __init__(
        self,
        bands: Sequence[LayerBand],
        window: int = 32,
        mean_states: Mapping[int, np.ndarray] | None = None,
        *,
        outlier_dims: Mapping[int, Sequence[int]] | None = None,
        probe: LinearProbe | None = None,
        recurrence_levels: Mapping[int, float] | None = None,
        prefill_probe: LinearProbe | None = None,
    ) -> None:
        if window < 2:
            raise ValueError("window must hold at least 2 tokens")
        self.bands = tuple(bands)
        self.layers = captured_layers(self.bands)
        self.window = window
        self._row_of_layer = {layer: i for i, layer in enumerate(self.layers)}
        self._band_rows = {b.name: [self._row_of_layer[layer] for layer in b.layers] for b in self.bands}
        self._eff_rank_rows = [rows[-1] for rows in self._band_rows.values()]
        self._band_average = np.zeros((len(self.layers), len(self.bands)))
        for column, rows in enumerate(self._band_rows.values()):
            self._band_average[rows, column] = 1.0 / len(rows)
        self._column_names: tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]] | None = None
        self._mean_dirs = self._mean_directions(mean_states)
        self._outliers = self._outlier_index(outlier_dims or {})
        self._probe = self._probe_arrays(probe)
        self._prefill = self._probe_arrays(prefill_probe)
        self._recurrence_levels = self._levels(recurrence_levels or {})
        self._ring: np.ndarray | None = None
        self._gram = np.zeros((len(self.layers), window, window))
        self._outlier_ring = np.zeros((len(self.layers), window, self._outliers[0].shape[1]))
        self._outlier_gram = np.zeros((len(self.layers), window, window))
        self._count = 0

    def _outlier_index(self, outlier_dims: Mapping[int, Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Per captured layer, the outlier dimensions to remove, padded: ``(index [L, k], mask [L, k])``."""
        width = max((len(outlier_dims.get(layer, ())) for layer in self.layers), default=0)
        index = np.zeros((len(self.layers), width), dtype=np.int64)
        mask = np.zeros((len(self.layers), width))
        for row, layer in enumerate(self.layers):
            dims = list(outlier_dims.get(layer, ()))
            index[row, : len(dims)] = dims
            mask[row, : len(dims)] = 1.0
        return index, mask

    def _probe_arrays(self, probe: LinearProbe | None) -> tuple[list[int], np.ndarray, np.ndarray, float] | None:
        """The probe folded for scoring, or None when it is absent or reads layers that are not captured."""
        if probe is None or any(layer not in self._row_of_layer for layer in probe.layers):
            return None
        w, mean, bias = probe.arrays()
        return [self._row_of_layer[layer] for layer in probe.layers], w, mean, float(bias)

    def _levels(self, recurrence_levels: Mapping[int, float]) -> np.ndarray | None:
        """Per captured layer, the calibrated recurrence level; None unless every captured layer has one."""
        if any(layer not in recurrence_levels for layer in self.layers):
            return None
        return np.array([float(recurrence_levels[layer]) for layer in self.layers])

    def _mean_directions(self, mean_states: Mapping[int, np.ndarray] | None) -> np.ndarray | None:
        if not mean_states or any(layer not in mean_states for layer in self.layers):
            return None
        means = np.stack([np.asarray(mean_states[layer], dtype=np.float64) for layer in self.layers])
        return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), _EPS)

    def push(self, states: np.ndarray, entropy: float, token_id: int) -> StepFeatures:
        """Add the states (``[len(self.layers), d]``, in ``self.layers`` order) behind one generated token."""
        return FeatureExtractor.push_many([self], np.asarray(states)[None], [entropy], [token_id])[0]

    @staticmethod
    def push_many(
        extractors: Sequence["FeatureExtractor"],
        states: np.ndarray,
        entropies: Sequence[float],
        token_ids: Sequence[int],
    ) -> list[StepFeatures]:
        """One token for each of several generations at once (``states``: ``[generations, layers, d]``).

        The extractors must share their configuration (bands, window, calibration arrays); each keeps its own
        window. Computing a decode step's rows together costs about what one row costs alone: the work is
        numpy calls on small arrays, and they are made once for the whole step. Windows that are not full yet
        are zero-padded: zero rows add nothing to the Gram sums, and the padding is masked where it would.
        """
        first = extractors[0]
        x = np.asarray(states, dtype=np.float64)
        rows, layers = len(extractors), len(first.layers)
        grams = np.empty((rows, layers, first.window, first.window))
        outlier_grams = np.empty_like(grams) if first._outliers[0].shape[1] else None
        outlier_x = first._outlier_values(x) if outlier_grams is not None else None
        slots, counts = np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.int64)
        for row, extractor in enumerate(extractors):
            slots[row] = extractor._record(x[row], None if outlier_x is None else outlier_x[row])
            counts[row] = extractor._count
            grams[row] = extractor._gram
            if outlier_grams is not None:
                outlier_grams[row] = extractor._outlier_gram
        return first._features(x, grams, outlier_grams, slots, counts, entropies, token_ids)

    def _outlier_values(self, x: np.ndarray) -> np.ndarray:
        """The outlier dimensions of every row's states, zero where a layer has fewer (``[rows, layers, k]``)."""
        index, mask = self._outliers
        return x[:, np.arange(len(self.layers))[:, None], index] * mask

    def _record(self, x: np.ndarray, outlier_x: np.ndarray | None) -> int:
        """Put one token's states (and their outlier dimensions) in the window, update its Gram matrices;
        returns the slot it took."""
        if self._ring is None:
            self._ring = np.zeros((len(self.layers), self.window, x.shape[-1]))
        slot = self._count % self.window
        self._ring[:, slot] = x
        dots = (self._ring @ x[:, :, None])[..., 0]
        self._gram[:, slot, :] = dots
        self._gram[:, :, slot] = dots
        if outlier_x is not None:
            self._outlier_ring[:, slot] = outlier_x
            outlier_dots = (self._outlier_ring @ outlier_x[:, :, None])[..., 0]
            self._outlier_gram[:, slot, :] = outlier_dots
            self._outlier_gram[:, :, slot] = outlier_dots
        self._count += 1
        return slot

    def _features(
        self,
        x: np.ndarray,
        grams: np.ndarray,
        outlier_grams: np.ndarray | None,
        slots: np.ndarray,
        counts: np.ndarray,
        entropies: Sequence[float],
        token_ids: Sequence[int],
    ) -> list[StepFeatures]:
        """Features of a step's rows from their windows' Gram matrices (``[rows, layers, window, window]``)."""
        rows, layers, window = grams.shape[0], grams.shape[1], self.window
        filled = np.minimum(counts, window)
        previous = (slots - 1) % window
        every_row = np.arange(rows)
        n = np.repeat(filled, layers)
        flat = grams.reshape(rows * layers, window, window)
        unit = unit_grams(flat)
        per_layer = {"pr": participation_ratios(unit, n), "pr_raw": participation_ratios(flat, n)}
        if self._recurrence_levels is not None:
            ages = np.repeat((slots[:, None] - np.arange(window)) % window, layers, axis=0)
            levels = np.tile(self._recurrence_levels, rows)
            per_layer[NOVEL_PR] = novel_participation_ratios(unit, n, ages, levels)[0]
        unit = unit.reshape(grams.shape)
        if outlier_grams is not None:  # the batch's copy of the outlier Gram matrices becomes the clipped one
            clipped = unit_grams(np.subtract(grams, outlier_grams, out=outlier_grams).reshape(flat.shape))
            per_layer["pr_clip"] = participation_ratios(clipped, n)
            clipped = clipped.reshape(grams.shape)
        position = np.arange(window)
        earlier = (position < filled[:, None]) & (position != slots[:, None]) & (position != previous[:, None])
        latest = unit[every_row, :, slots, :]
        per_layer["recurrence"] = np.where(earlier[:, None, :], latest, -1.0).max(axis=2)  # cosines are ≥ -1
        per_layer["cosine"] = unit[every_row, :, slots, previous]
        if outlier_grams is not None:
            per_layer["cosine_clip"] = clipped[every_row, :, slots, previous]
        if self._mean_dirs is not None:
            per_layer["drift"] = np.einsum("ld,rld->rl", self._mean_dirs, x) / np.maximum(_norms(x), _EPS)
        band_means = np.stack([values.reshape(rows, layers) for values in per_layer.values()]) @ self._band_average
        eff_rank_units = unit[:, self._eff_rank_rows].reshape(-1, window, window)
        eff_rank = effective_ranks(centred_grams(eff_rank_units, np.repeat(filled, len(self.bands))))
        # one row per generation: every band's value of every metric, then the effective ranks
        table = np.concatenate([band_means.transpose(1, 0, 2).reshape(rows, -1), eff_rank.reshape(rows, -1)], axis=1)
        names, needs = self._columns(tuple(per_layer))
        path = None
        if layers > 1:
            steps = _norms(np.diff(x, axis=1)).sum(axis=1)
            path = (steps / np.maximum(_norms(x[:, -1]), _EPS)).tolist()
        probe = None
        if self._probe is not None:
            probe_rows, w, mean, bias = self._probe
            probe = ((x[:, probe_rows].reshape(rows, -1) - mean) @ w + bias).tolist()
        prefill = self._prefill_scores(x, counts)
        results = []
        for row, row_values in enumerate(table.tolist()):
            count = int(counts[row])
            values = {"entropy": float(entropies[row])}
            if count == 1 and prefill is not None:
                values[PREFILL_FEATURE] = prefill[row]
            if path is not None:
                values["path"] = path[row]
            if probe is not None:
                values["probe"] = probe[row]
            if count > _MOST_TOKENS_NEEDED:
                values.update(zip(names, row_values, strict=True))
            else:
                values.update((name, v) for name, v, need in zip(names, row_values, needs, strict=True) if count > need)
            if self._recurrence_levels is not None:  # the novel PR is NaN (absent) while too few states are novel
                values = {name: v for name, v in values.items() if not math.isnan(v)}
            results.append(StepFeatures(count - 1, int(token_ids[row]), int(filled[row]), values))
        return results

    def _prefill_scores(self, x: np.ndarray, counts: np.ndarray) -> list[float] | None:
        """The prefill probe's score of every row (used for first tokens only: their states are the prompt's
        last position); None when no row is a first token or there is no prefill probe."""
        if self._prefill is None or not (counts == 1).any():
            return None
        rows, w, mean, bias = self._prefill
        return ((x[:, rows].reshape(len(x), -1) - mean) @ w + bias).tolist()

    def _columns(self, metrics: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Names of a step table's columns (``<band>.<metric>``, effective ranks last) and the tokens each needs;
        formatted once per extractor."""
        if self._column_names is None or self._column_names[0] != metrics:
            columns = [(metric, band) for metric in metrics for band in self._band_rows]
            columns += [("eff_rank", band) for band in self._band_rows]
            names = tuple(f"{band}.{metric}" for metric, band in columns)
            needs = tuple(_NEEDS_TOKENS.get(metric, 0) for metric, _ in columns)
            self._column_names = (metrics, names, needs)
        return self._column_names[1], self._column_names[2]


def _norms(x: np.ndarray) -> np.ndarray:
    """L2 norms along the last axis."""
    return np.sqrt(np.einsum("...d,...d->...", x, x))

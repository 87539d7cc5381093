"""Layer bands: contiguous layer ranges whose metrics are reported together (core, mantle, crust)."""

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["LayerBand", "captured_layers", "default_bands", "format_bands", "parse_bands"]

BAND_NAMES = ("early", "middle", "late")


@dataclass(frozen=True)
class LayerBand:
    """A named band and the layers in it whose residual stream is captured."""

    name: str
    layers: tuple[int, ...]


def default_bands(num_layers: int, layers_per_band: int = 2) -> tuple[LayerBand, ...]:
    """Split ``num_layers`` into early/middle/late thirds and capture evenly spaced layers inside each.

    Layer 0 is skipped: right after the embedding, the residual stream says little about the sequence.
    """
    bounds = [round(i * num_layers / len(BAND_NAMES)) for i in range(len(BAND_NAMES) + 1)]
    bands = []
    for name, start, stop in zip(BAND_NAMES, bounds, bounds[1:], strict=False):
        start = max(start, 1)
        step = (stop - start) / (layers_per_band + 1)
        layers = sorted({min(stop - 1, start + round(step * (i + 1))) for i in range(layers_per_band)})
        bands.append(LayerBand(name, tuple(layers)))
    return tuple(bands)


def format_bands(bands: Iterable[LayerBand]) -> str:
    """The inverse of :func:`parse_bands`: ``"early=4,8;middle=12,16;late=21,26"``."""
    return ";".join(f"{band.name}={','.join(map(str, band.layers))}" for band in bands)


def parse_bands(spec: str) -> tuple[LayerBand, ...]:
    """Parse ``"early=4,8;middle=12,16;late=21,26"`` into bands."""
    bands = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, layers = part.partition("=")
        if not name or not layers:
            raise ValueError(f"band spec {part!r} must look like name=layer,layer")
        bands.append(LayerBand(name.strip(), tuple(int(x) for x in layers.split(","))))
    return tuple(bands)


def captured_layers(bands: tuple[LayerBand, ...]) -> tuple[int, ...]:
    """Every layer captured by any band, sorted, each once."""
    return tuple(sorted({layer for band in bands for layer in band.layers}))

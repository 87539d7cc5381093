"""The PNG of ``sinkwatch bench engine --plot``: aggregate throughput and time per output token vs streams."""

import statistics
from pathlib import Path

from lab.plotting import pyplot, save

__all__ = ["plot_engine"]

CAPTURE_STYLES = {"off": ("capture off", "0.45"), "on": ("capture + monitors on", "tab:orange")}


def plot_engine(samples: dict[str, list[float]], levels: list[int], path: Path) -> Path:
    """Two panels from the per-round samples (keys ``off@N``/``on@N``, aggregate tokens/s): the aggregate
    throughput, and the mean time per output token each stream sees (streams / aggregate), medians joined."""
    plt = pyplot()
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(9, 3.6))
    for capture, (label, colour) in CAPTURE_STYLES.items():
        rounds = [samples[f"{capture}@{n}"] for n in levels]
        medians = [statistics.median(values) for values in rounds]
        throughput.plot(levels, medians, marker="o", color=colour, label=label)
        latency.plot(levels, [1000 * n / m for n, m in zip(levels, medians, strict=True)], marker="o", color=colour)
        for n, values in zip(levels, rounds, strict=True):
            throughput.scatter([n] * len(values), values, color=colour, s=10, alpha=0.5)
            latency.scatter([n] * len(values), [1000 * n / v for v in values], color=colour, s=10, alpha=0.5)
    throughput.set(xlabel="concurrent streams", ylabel="aggregate tokens/s", xticks=levels, title="Throughput")
    latency.set(xlabel="concurrent streams", ylabel="ms per output token", xticks=levels, title="Time per output token")
    throughput.legend(fontsize=8)
    figure.suptitle("Embedded engine (dots: rounds, line: median)", fontsize=10)
    return save(figure, path)

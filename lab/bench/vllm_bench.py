"""vLLM plugin overhead: tokens/s of a vLLM server with the sinkwatch plugin off vs on, at 1 and 16 streams.

Two servers run side by side on the same model: one with ``SINKWATCH_VLLM_PLUGIN=0`` (vLLM as shipped),
one with the plugin. Requests go straight to them (no gateway in the way) and are interleaved by round
(off, on, on-untagged; the order rotates) so that drift in machine load hits each alike, and each
measurement follows a few untimed tokens on its own server; each figure is the median over rounds.
``on`` requests carry the tag that makes the plugin compute and push features (to a socket this
benchmark drains and counts, so monitoring is known to have happened); ``untagged`` requests on the same
server show what the plugin costs requests it does not monitor. ``ignore_eos`` makes every stream decode
exactly ``--tokens`` tokens. The servers are started twice, in both orders (``START_ORDERS``), half the
rounds each.
"""

import argparse
import asyncio
import contextlib
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import zmq

from gateway.engine.provision import DEFAULT_MODEL, provision, served_name
from lab.bench.vllm_server import VLLMServer, vllm_python
from monitors.vllm_plugin.wire import RequestTag, decode_batch

__all__ = ["FeatureCounter", "add_arguments", "run", "session_rounds", "summarize"]

PROMPT = "Write a detailed essay about the history of sailing ships."
CONFIGS = ("off", "on", "on_untagged")
# Half the rounds start the plugin-off server first, half the plugin-on one: two processes of the same
# server can differ by a few per cent (docs/BENCHMARKS.md), as much as the 3 % being measured; a new pair
# in the other order keeps a difference that comes with the start order out of the pooled figures.
START_ORDERS = (("off", "on"), ("on", "off"))
# Untimed tokens per stream that warm up each path, then wake a server before each measurement: on
# 2026-12-01 a measurement taken right after one on the other server ran 3-11 % slower than one after the
# same server's, which penalised the plugin-off server (always after a switch) more than the plugin-on
# server's two paths.
WAKE_TOKENS = 8
FEATURES_DRAIN_S = 10  # how long the plugin gets to send the last features after the last request


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch bench vllm``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per stream")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated stream counts")
    parser.add_argument("--waves", type=int, default=2, help="batches of --concurrency requests per measurement")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds, split over the two start orders")
    parser.add_argument("--vllm-python", default=vllm_python(), help="python of the vLLM environment")
    parser.add_argument("--logs", type=Path, default=Path("out/bench-vllm"), help="folder for the servers' logs")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")


class FeatureCounter:
    """Binds a PULL socket for the plugin's features and counts what arrives, on a thread."""

    def __init__(self) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.bind("tcp://127.0.0.1:0")
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received = 0
        threading.Thread(target=self._count, daemon=True).start()

    def _count(self) -> None:
        while True:
            self.received += len(decode_batch(self._socket.recv())[1])


async def _request(client: httpx.AsyncClient, url: str, model: str, index: int, tokens: int, sink: str | None) -> int:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0.8,
        "seed": index,
        "ignore_eos": True,
    }
    if sink is not None:
        body["vllm_xargs"] = RequestTag(f"bench-{index}", sink).to_xargs()
    response = await client.post(f"{url}/completions", json=body, timeout=600)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


async def _decode(url: str, model: str, streams: int, waves: int, tokens: int, sink: str | None) -> tuple[int, float]:
    """Tokens decoded by ``waves`` batches of ``streams`` concurrent requests, and the seconds they took."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=streams)) as client:
        start = time.perf_counter()
        produced = 0
        for wave in range(waves):
            batch = (_request(client, url, model, wave * streams + i, tokens, sink) for i in range(streams))
            produced += sum(await asyncio.gather(*batch))
        return produced, time.perf_counter() - start


def _await_features(counter: FeatureCounter, monitored_tokens: int) -> bool:
    """Whether every monitored token's features arrived (the plugin may still be sending the last ones)."""
    deadline = time.monotonic() + FEATURES_DRAIN_S
    while counter.received < monitored_tokens and time.monotonic() < deadline:
        time.sleep(0.1)
    print(f"features received from the plugin: {counter.received} of {monitored_tokens} monitored tokens")
    return counter.received >= monitored_tokens


def session_rounds(rounds: int) -> list[int]:
    """Rounds per start order: half each, the first order taking the odd one."""
    return [rounds - rounds // 2, rounds // 2]


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def summarize(streams: int, sessions: list[dict[str, list[float]]]) -> dict:
    """Medians over all sessions' rounds, and the medians of per-round ratios (robust to drift between rounds)."""
    samples = {config: [value for session in sessions for value in session[config]] for config in CONFIGS}
    row = {"streams": streams, **{config: statistics.median(values) for config, values in samples.items()}}
    row["loss_on"] = 1 - row["on"] / row["off"]
    row["loss_on_untagged"] = 1 - row["on_untagged"] / row["off"]
    row["round_loss_on"] = 1 - _median_ratio(samples["on"], samples["off"])
    row["round_cost_same_server"] = 1 - _median_ratio(samples["on"], samples["on_untagged"])
    row["sessions"] = sessions
    return row


@dataclass
class _Run:
    """What the sessions of one benchmark run share: the model, the feature counter, the tokens monitored."""

    args: argparse.Namespace
    model_dir: Path
    name: str
    stream_counts: list[int]
    counter: FeatureCounter = field(default_factory=FeatureCounter)
    monitored_tokens: int = 0

    def session(self, index: int, rounds: int) -> list[dict[str, list[float]]]:
        """Start both servers in session ``index``'s order and measure each stream count: its samples."""
        servers = {
            plugin: VLLMServer(
                model_dir=self.model_dir,
                served_name=self.name,
                log_path=self.args.logs / f"{plugin}-{index}.log",
                dtype=self.args.dtype,
                env={"SINKWATCH_VLLM_PLUGIN": flag},
                python=self.args.vllm_python,
            )
            for plugin, flag in (("off", "0"), ("on", "1"))
        }
        start_order = START_ORDERS[index]
        print(f"session {index + 1}: starting the plugin-{start_order[0]} server, then the plugin-{start_order[1]} one")
        measured = []
        with contextlib.ExitStack() as running:
            for plugin in start_order:
                running.enter_context(servers[plugin])
            targets = {
                "off": (servers["off"].url, None),
                "on": (servers["on"].url, self.counter.address),
                "on_untagged": (servers["on"].url, None),
            }
            for streams in self.stream_counts:
                samples = self._measure(targets, streams, rounds)
                measured.append(samples)
                off, on, untagged = (statistics.median(samples[config]) for config in CONFIGS)
                print(f"  {streams:>3} streams: off {off:7.1f} tok/s | on {on:7.1f} | on, unmonitored {untagged:7.1f}")
            # the plugin's server stops with the session: its last features must be in first
            if not _await_features(self.counter, self.monitored_tokens):
                raise SystemExit(
                    "the plugin did not deliver every monitored token's features: see the 'on' server's log"
                )
        return measured

    def _measure(self, targets: dict[str, tuple[str, str | None]], streams: int, rounds: int) -> dict[str, list[float]]:
        """Tokens/s of each path in ``rounds`` interleaved rounds, the order rotating."""
        for url, sink in targets.values():  # warm up each path once, the monitored one with its sink
            self._decode(url, streams, 1, WAKE_TOKENS, sink)
        samples: dict[str, list[float]] = {config: [] for config in CONFIGS}
        for round_index in range(rounds):
            for config in CONFIGS[round_index % 3 :] + CONFIGS[: round_index % 3]:
                url, sink = targets[config]
                self._decode(url, streams, 1, WAKE_TOKENS, None)
                produced, seconds = self._decode(url, streams, self.args.waves, self.args.tokens, sink)
                samples[config].append(produced / seconds)
        return samples

    def _decode(self, url: str, streams: int, waves: int, tokens: int, sink: str | None) -> tuple[int, float]:
        """:func:`_decode`, counting the tokens whose features the plugin must deliver."""
        produced, seconds = asyncio.run(_decode(url, self.name, streams, waves, tokens, sink))
        self.monitored_tokens += produced if sink else 0
        return produced, seconds


def run(args: argparse.Namespace) -> None:
    stream_counts = [int(c) for c in args.concurrency.split(",")]
    print(f"vLLM servers in {args.dtype}; logs in {args.logs}")
    bench = _Run(args, provision(args.model), served_name(args.model), stream_counts)
    sessions = [bench.session(index, rounds) for index, rounds in enumerate(session_rounds(args.rounds)) if rounds]
    results = [summarize(streams, [measured[i] for measured in sessions]) for i, streams in enumerate(stream_counts)]
    for row in results:
        print(
            f"{row['streams']:>3} streams, all rounds: off {row['off']:7.1f} tok/s | on {row['on']:7.1f}"
            f" ({row['loss_on']:+.1%} loss; per-round median {row['round_loss_on']:+.1%})"
            f" | on, unmonitored {row['on_untagged']:7.1f} (same-server cost, per-round median"
            f" {row['round_cost_same_server']:+.1%})"
        )
    report = {
        "model": bench.name,
        "dtype": args.dtype,
        "tokens_per_stream": args.tokens,
        "rounds": args.rounds,
        "start_orders": [list(order) for order in START_ORDERS[: len(sessions)]],
        "features_received": bench.counter.received,
        "monitored_tokens": bench.monitored_tokens,
        "results": results,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))

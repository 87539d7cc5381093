"""The monitored vLLM path's own cost: the gateway (``--backend vllm``, relaying and monitoring) against vLLM
directly, on the same vLLM server with the plugin, at 1 and 16 streams.

Both paths are monitored by the plugin: direct requests carry the tag that makes it compute and push
features (to a socket this benchmark drains), so the difference is what the gateway adds on top of the
plugin's own cost (``sinkwatch bench vllm`` measures that). Rounds interleave the two paths, the order
alternating, and each measurement follows a few untimed tokens on its path. Per path and stream count:
time to first token, the gaps between a stream's chunks (p50, p99), and tokens/s over all streams.
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import time
from pathlib import Path

import httpx

from gateway.engine.provision import DEFAULT_MODEL, provision, served_name
from lab.bench.vllm_bench import FeatureCounter
from lab.bench.vllm_server import VLLMServer, vllm_python
from lab.fakes.processes import gateway_process
from monitors.vllm_plugin.wire import RequestTag

__all__ = ["add_arguments", "run", "summarize"]

PROMPT = "Write a detailed essay about the history of sailing ships."
PATHS = ("direct", "gateway")
WAKE_TOKENS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch bench relay``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per stream")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated stream counts")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per stream count")
    parser.add_argument("--vllm-python", default=vllm_python(), help="python of the vLLM environment")
    parser.add_argument("--logs", type=Path, default=Path("out/bench-relay"), help="folder for vLLM's log")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")


async def _stream(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, list[float], int]:
    """One streamed chat completion: time to its first text, the gaps between its chunks, its tokens."""
    started = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async with client.stream("POST", f"{url}/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                arrivals.append(time.perf_counter())
            if isinstance(event.get("usage"), dict):
                tokens = int(event["usage"]["completion_tokens"])
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    return (arrivals[0] - started if arrivals else float("nan")), gaps, tokens


async def _measure(url: str, model: str, streams: int, tokens: int, sink: str | None) -> dict:
    """``streams`` concurrent streams on ``url``: their TTFTs, chunk gaps, and tokens/s over all of them."""
    bodies = []
    for index in range(streams):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens,
            "temperature": 0.8,
            "seed": index,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sink is not None:
            body["vllm_xargs"] = RequestTag(f"bench-{time.monotonic_ns()}-{index}", sink).to_xargs()
        bodies.append(body)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=streams)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(_stream(client, url, body) for body in bodies))
        seconds = time.perf_counter() - start
    return {
        "ttft": [ttft for ttft, _, _ in results],
        "gaps": [gap for _, gaps, _ in results for gap in gaps],
        "tokens_per_s": sum(count for _, _, count in results) / seconds,
    }


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def summarize(streams: int, samples: dict[str, list[dict]]) -> dict:
    """Per path: median TTFT, chunk-gap p50/p99 (ms), median tokens/s; then what the gateway adds."""
    row: dict = {"streams": streams}
    for path in PATHS:
        rounds = samples[path]
        gaps = [gap for sample in rounds for gap in sample["gaps"]]
        row[path] = {
            "ttft_ms": 1000 * statistics.median(t for sample in rounds for t in sample["ttft"]),
            "gap_p50_ms": 1000 * _percentile(gaps, 0.5),
            "gap_p99_ms": 1000 * _percentile(gaps, 0.99),
            "tokens_per_s": statistics.median(sample["tokens_per_s"] for sample in rounds),
        }
    direct, gateway = row["direct"], row["gateway"]
    row["added_ttft_ms"] = gateway["ttft_ms"] - direct["ttft_ms"]
    row["added_gap_p50_ms"] = gateway["gap_p50_ms"] - direct["gap_p50_ms"]
    row["added_gap_p99_ms"] = gateway["gap_p99_ms"] - direct["gap_p99_ms"]
    row["tokens_per_s_loss"] = 1 - gateway["tokens_per_s"] / direct["tokens_per_s"]
    row["round_tokens_per_s_loss"] = 1 - statistics.median(
        g["tokens_per_s"] / d["tokens_per_s"] for d, g in zip(samples["direct"], samples["gateway"], strict=True)
    )
    return row


def run(args: argparse.Namespace) -> None:
    name = served_name(args.model)
    counter = FeatureCounter()
    server = VLLMServer(
        model_dir=provision(args.model),
        served_name=name,
        log_path=args.logs / "vllm.log",
        dtype=args.dtype,
        python=args.vllm_python,
    )
    results = []
    with contextlib.ExitStack() as running:
        running.enter_context(server)
        gateway = running.enter_context(
            gateway_process("--backend", "vllm", "--upstreams", server.url, "--policy", "annotate", timeout=300)
        )
        urls = {"direct": (server.url, counter.address), "gateway": (gateway.base_url, None)}
        for streams in (int(c) for c in args.concurrency.split(",")):
            for url, sink in urls.values():  # warm up each path once
                asyncio.run(_measure(url, name, streams, WAKE_TOKENS, sink))
            samples: dict[str, list[dict]] = {path: [] for path in PATHS}
            for round_index in range(args.rounds):
                for path in PATHS if round_index % 2 == 0 else PATHS[::-1]:
                    url, sink = urls[path]
                    asyncio.run(_measure(url, name, streams, WAKE_TOKENS, sink))
                    samples[path].append(asyncio.run(_measure(url, name, streams, args.tokens, sink)))
            row = summarize(streams, samples)
            results.append(row)
            print(
                f"{streams:>3} streams: added TTFT {row['added_ttft_ms']:+.2f} ms, added chunk gap p50"
                f" {row['added_gap_p50_ms']:+.2f} ms, p99 {row['added_gap_p99_ms']:+.2f} ms; tokens/s direct"
                f" {row['direct']['tokens_per_s']:.1f}, gateway {row['gateway']['tokens_per_s']:.1f}"
                f" ({row['tokens_per_s_loss']:+.1%} loss; per-round median {row['round_tokens_per_s_loss']:+.1%})"
            )
    report = {"model": name, "dtype": args.dtype, "tokens_per_stream": args.tokens, "rounds": args.rounds}
    report["results"] = results
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))

"""Proxy overhead: a fast fake OpenAI upstream measured directly and through sinkwatch, interleaved.

Three processes on loopback: the fake upstream (two of them: one answering as fast as it can, one
streaming at a controlled token rate, told apart by model name), the gateway (``sinkwatch serve
--backend openai`` in front of both) and this load generator. Every measurement alternates between
the upstream itself and the gateway, so drift in machine load hits both alike:

- one client, whole answers: latency p50/p99, direct and proxied, and what the gateway adds;
- one client, streams: time to first token, the same way;
- saturation: answers per second at several client concurrencies (median over rounds), the best of
  each, and the gateway's share of the direct rate; the gateway's CPU time per request;
- concurrent streams at the paced token rate: the most streams served with no error and at least 90%
  of the ideal stream rate.

Placement: by default the gateway gets cores of its own (``--gateway-cores``, 1) and the load generator
and the fakes share the rest, as in a deployment, where clients, gateway and model server do not share
CPUs; without that, on a small machine, the proxied path also pays for the gateway's CPU out of the
client's and upstream's share, and the saturation ratio says how the machine splits, not whether the
gateway keeps up. ``--gateway-cores 0`` runs everything on all cores.

A reference proxy (``--reference``; nginx, when installed) is measured the same way on the gateway's
cores: what a C proxy adds and reaches on the same host in the same run, so that the saturation ratio
can be read against what any extra hop costs there (``lab.bench.reference_proxy``).

``--profile`` runs the gateway under py-spy (``pip install py-spy``) and reports where its CPU samples
went while serving, by component.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from lab.bench.loadgen import LoadClient, LoadResult, percentile, run_load
from lab.bench.reference_proxy import NGINX_INSTALL_HINT, nginx, nginx_process, nginx_version
from lab.fakes.processes import Process, fake_upstream_process, gateway_process, py_spy

__all__ = ["add_arguments", "run"]

FAST_MODEL = "fake-fast"
PACED_MODEL = "fake-paced"
CHAT = "/chat/completions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch bench proxy``."""
    parser.add_argument("--requests", type=int, default=2000, help="single-client requests per kind and path")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--concurrency", default="1,4,16,64", help="client counts for the request-rate saturation")
    parser.add_argument("--streams", default="100,250,500,1000", help="concurrent stream counts to try")
    parser.add_argument("--token-rate", type=float, default=50.0, help="tokens/s of each paced stream")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each saturation run")
    parser.add_argument("--rounds", type=int, default=2, help="saturation runs per level and path")
    parser.add_argument(
        "--gateway-cores", type=int, default=1, help="cores for the gateway alone (0: all processes share all cores)"
    )
    parser.add_argument("--gateway-workers", type=int, default=1, help="the gateway's worker processes (--workers)")
    parser.add_argument(
        "--reference",
        choices=("auto", "nginx", "none"),
        default="auto",
        help=f"a proxy measured alongside the gateway, on its cores (auto: nginx if installed; {NGINX_INSTALL_HINT})",
    )
    parser.add_argument("--profile", action="store_true", help="sample the gateway with py-spy (pip install py-spy)")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")


@dataclass
class Paths:
    """The same API reached directly, through the gateway and, when there is one, through the reference proxy."""

    direct: Process
    paced: Process
    gateway: Process
    reference: Process | None = None

    def fast(self) -> dict[str, Process]:
        """The paths to the fast upstream, by name, in the order each round measures them."""
        named = {"direct": self.direct, "proxied": self.gateway, "reference": self.reference}
        return {name: process for name, process in named.items() if process is not None}


def _body(model: str, tokens: int, stream: bool) -> bytes:
    messages = [{"role": "user", "content": "Write one sentence about proxies."}]
    return orjson.dumps({"model": model, "messages": messages, "max_tokens": tokens, "stream": stream})


def _quantiles_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 0.5) * 1e3, "p99_ms": percentile(values, 0.99) * 1e3}


async def _single_client(paths: Paths, body: bytes, stream: bool, requests: int) -> dict:
    """One client taking turns on every path; latency (whole) or time to first token (stream).

    ``added``: what the gateway adds to the direct path; ``reference_added``: what the reference proxy adds.
    """
    fast = paths.fast()
    clients = {name: LoadClient(process.base_url, 1) for name, process in fast.items()}
    results = {name: LoadResult() for name in fast}
    try:
        for _ in range(requests // 20):  # warm up every path
            for client in clients.values():
                await client.call(CHAT, body, stream, LoadResult())
        for _ in range(requests):
            for name, client in clients.items():
                await client.call(CHAT, body, stream, results[name])
    finally:
        for client in clients.values():
            client.close()
    measure = "first_tokens" if stream else "latencies"
    quantiles = {name: _quantiles_ms(getattr(result, measure)) for name, result in results.items()}
    report = {**quantiles, "errors": sum(len(result.errors) for result in results.values())}
    for name, key in (("proxied", "added"), ("reference", "reference_added")):
        if name in quantiles:
            report[key] = {q: quantiles[name][q] - quantiles["direct"][q] for q in quantiles["direct"]}
    return report


async def _saturation(paths: Paths, body: bytes, levels: list[int], seconds: float, rounds: int) -> dict:
    """Answers per second per client concurrency on every path (median over interleaved rounds); the CPU
    each proxy spends per request, and what the load generator and the fake upstream spend per request on
    each path (an extra hop can cost them more too), by concurrency."""
    fast = paths.fast()
    rates: dict[str, dict[int, list[float]]] = {name: {} for name in fast}
    proxy_cpu: dict[str, dict[int, list[float]]] = {name: {} for name in fast if name != "direct"}
    ends_cpu: dict[str, dict[int, list[float]]] = {name: {} for name in fast}
    errors = 0
    for level in levels:
        for _ in range(rounds):
            for name, process in fast.items():
                cpu_before, ends_before = process.cpu_seconds(), _ends_cpu_seconds(paths)
                result = await run_load(process.base_url, CHAT, body, stream=False, concurrency=level, duration=seconds)
                errors += len(result.errors)
                rates[name].setdefault(level, []).append(result.rate)
                if not result.requests:
                    continue
                ends = (_ends_cpu_seconds(paths) - ends_before) / result.requests
                ends_cpu[name].setdefault(level, []).append(ends)
                if name in proxy_cpu:
                    proxy_cpu[name].setdefault(level, []).append((process.cpu_seconds() - cpu_before) / result.requests)
    medians = {name: {level: statistics.median(r) for level, r in by_level.items()} for name, by_level in rates.items()}
    best = {name: max(by_level.values()) for name, by_level in medians.items()}
    report = {
        "rate_per_s": medians,
        "max_rate_per_s": best,
        "proxied_share_of_direct": best["proxied"] / best["direct"],
        "gateway_cpu_us_per_request": _median_us(proxy_cpu["proxied"]),
        "proxy_cpu_us_per_request": {name: _medians_us(by_level) for name, by_level in proxy_cpu.items()},
        "client_and_upstream_cpu_us_per_request": {name: _medians_us(by_level) for name, by_level in ends_cpu.items()},
        "errors": errors,
    }
    if "reference" in best:
        report["reference_share_of_direct"] = best["reference"] / best["direct"]
        report["proxied_share_of_reference"] = best["proxied"] / best["reference"]
        report["reference_cpu_us_per_request"] = _median_us(proxy_cpu["reference"])
    return report


def _median_us(seconds_by_level: dict[int, list[float]]) -> float:
    """The median over every level's samples, in microseconds."""
    return statistics.median(value for values in seconds_by_level.values() for value in values) * 1e6


def _medians_us(seconds_by_level: dict[int, list[float]]) -> dict[int, float]:
    """The median of each level's samples, in microseconds."""
    return {level: statistics.median(values) * 1e6 for level, values in seconds_by_level.items()}


def _ends_cpu_seconds(paths: Paths) -> float:
    """CPU time so far of the two ends every path shares: this load generator and the fast fake upstream."""
    return time.process_time() + paths.direct.cpu_seconds()


async def _streams(paths: Paths, levels: list[int], tokens: int, token_rate: float, seconds: float) -> dict:
    """Concurrent paced streams: stream rate against the ideal, errors, time to first token."""
    body = _body(PACED_MODEL, tokens, stream=True)
    ideal_duration = tokens / token_rate
    table: dict[str, list[dict]] = {"direct": [], "proxied": []}
    for level in levels:
        for proxied in (False, True):
            base = (paths.gateway if proxied else paths.paced).base_url
            result = await run_load(base, CHAT, body, stream=True, concurrency=level, duration=seconds)
            ideal_rate = level / ideal_duration
            table["proxied" if proxied else "direct"].append(
                {
                    "streams": level,
                    "stream_rate_per_s": result.rate,
                    "share_of_ideal": result.rate / ideal_rate,
                    "errors": len(result.errors),
                    "ttft_p99_ms": percentile(result.first_tokens, 0.99) * 1e3,
                }
            )
    held = {
        kind: max((row["streams"] for row in rows if not row["errors"] and row["share_of_ideal"] >= 0.9), default=0)
        for kind, rows in table.items()
    }
    return {"levels": table, "max_streams_held": held, "tokens_per_stream": tokens, "token_rate": token_rate}


def _machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


_GROUPS = (
    ("gateway/proxy/", "gateway proxy fast path"),
    ("gateway/upstream/", "gateway upstream client"),
    ("gateway/security/", "gateway guards"),
    ("(middleware.py:", "gateway guards"),  # py-spy shortens this path
    ("gateway/", "gateway (other)"),
    ("uvicorn/", "uvicorn (HTTP server)"),
    ("starlette/", "starlette/fastapi layers"),
    ("fastapi/", "starlette/fastapi layers"),
    ("prometheus_client/", "prometheus_client"),
    ("asyncio/", "asyncio (Python side)"),
)


def _group(frame: str) -> str:
    return next((name for marker, name in _GROUPS if marker in frame), "other")


def _profile_summary(path: Path) -> dict:
    """Where the gateway's CPU samples went while serving (py-spy collapsed stacks; start-up excluded).

    ``self``: by the innermost frame (time in the event loop's own C code, sockets included, shows as
    ``event loop (uvloop, C)``); ``inclusive``: samples with any frame of the group on the stack.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        serving = next(
            (i for i, frame in enumerate(frames) if frame.startswith("Runner.run (asyncio/runners.py")), None
        )
        if serving is None or not count.isdigit():
            continue  # start-up and shutdown
        samples, frames = int(count), frames[serving + 1 :]
        total += samples
        leaf = _group(frames[-1]) if frames else "event loop (uvloop, C)"
        own[leaf] = own.get(leaf, 0) + samples
        for group in {_group(frame) for frame in frames}:
            inclusive[group] = inclusive.get(group, 0) + samples

    def shares(counts: dict[str, int]) -> dict[str, float]:
        return {k: round(100 * v / max(total, 1), 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}

    return {"samples": total, "self_percent": shares(own), "inclusive_percent": shares(inclusive)}


async def _measure(paths: Paths, args: argparse.Namespace) -> dict:
    levels = [int(c) for c in args.concurrency.split(",")]
    whole, streamed = _body(FAST_MODEL, args.tokens, False), _body(FAST_MODEL, args.tokens, True)
    return {
        "single_client_whole": await _single_client(paths, whole, False, args.requests),
        "single_client_stream_ttft": await _single_client(paths, streamed, True, args.requests // 2),
        "saturation": await _saturation(paths, whole, levels, args.seconds, args.rounds),
        "concurrent_streams": await _streams(
            paths, [int(s) for s in args.streams.split(",")], args.tokens, args.token_rate, args.seconds
        ),
    }


def _split_cores(gateway_cores: int) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """``(gateway's cores, everyone else's)`` out of this process's cores; ``(None, None)`` to share them all."""
    cores = sorted(os.sched_getaffinity(0))
    if gateway_cores <= 0:
        return None, None
    if gateway_cores >= len(cores):
        raise SystemExit(f"--gateway-cores {gateway_cores}: only {len(cores)} cores here, and the rest need one")
    return frozenset(cores[-gateway_cores:]), frozenset(cores[:-gateway_cores])


def _results(args: argparse.Namespace, reference_nginx: str | None) -> dict:
    """Start the servers (with ``reference_nginx``, that nginx too), bind them and this process to their
    cores, measure."""
    gateway_cpus, client_cpus = _split_cores(args.gateway_cores)
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)  # the load generator, and the fakes it starts
    results: dict = {"machine": _machine(), "settings": {k: v for k, v in vars(args).items() if k != "handler"}}
    proxies = "gateway and reference proxy" if reference_nginx else "gateway"
    results["machine"]["placement"] = {
        proxies: sorted(gateway_cpus) if gateway_cpus else "shared",
        "load generator and fakes": sorted(client_cpus) if client_cpus else "shared",
    }
    profile_path = Path(tempfile.mkdtemp()) / "gateway-stacks.txt" if args.profile else None
    paced_interval = 1.0 / args.token_rate
    results["reference_proxy"] = nginx_version(reference_nginx) if reference_nginx is not None else None
    with (
        fake_upstream_process(args.tokens, model=FAST_MODEL) as direct,
        fake_upstream_process(args.tokens, paced_interval, model=PACED_MODEL) as paced,
        gateway_process(
            "--backend",
            "openai",
            "--upstreams",
            f"fast={direct.base_url},paced={paced.base_url}",
            "--workers",
            str(args.gateway_workers),
            profile=profile_path,
            cpus=gateway_cpus,
        ) as gateway,
        (
            nginx_process(reference_nginx, direct.base_url, gateway_cpus)
            if reference_nginx is not None
            else contextlib.nullcontext()
        ) as reference,
    ):
        results.update(asyncio.run(_measure(Paths(direct, paced, gateway, reference), args)))
    results["machine"]["load_average_at_end"] = os.getloadavg()
    if profile_path is not None:
        results["gateway_profile"] = _profile_summary(profile_path)
    return results


def run(args: argparse.Namespace) -> None:
    """Run the benchmark and print (and optionally save) the results."""
    if args.profile and py_spy() is None:
        raise SystemExit("--profile needs py-spy, on PATH or in this Python's environment: pip install py-spy")
    reference_nginx = nginx() if args.reference != "none" else None
    if args.reference == "nginx" and reference_nginx is None:
        raise SystemExit(f"--reference nginx needs nginx: {NGINX_INSTALL_HINT}")
    affinity = os.sched_getaffinity(0)
    try:
        results = _results(args, reference_nginx)
    finally:
        os.sched_setaffinity(0, affinity)
    text = json.dumps(results, indent=1, default=str)
    print(text)
    if args.output:
        args.output.write_text(text)

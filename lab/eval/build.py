"""Generate the labelled evaluation corpus (cached), optionally the extra pass.

Generation runs through the embedded engine (batched, seeded); see :mod:`lab.eval.corpus` for the
prompt sets and sampling conditions, :mod:`lab.eval.augment` for the extra pass (attention entropy
with eager attention, top-k logit lens), and :mod:`lab.eval.labels` for the labels.
"""

import argparse
from collections import Counter

from gateway.engine.provision import DEFAULT_MODEL, served_name
from lab.eval.corpus import CORPUS_VERSION, build_corpus, corpus_dir
from lab.eval.dataset import labelled_entries

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval corpus``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--corpus", default=CORPUS_VERSION)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--split", choices=("tune", "test"), help="only this split (default: both)")
    parser.add_argument("--extra", action="store_true", help="also run the attention / top-k lens pass")
    parser.add_argument("--extra-limit", type=int, help="run the extra pass on an evenly spread subset this large")


def run(args: argparse.Namespace) -> None:
    """Generate what is missing, then print the label counts per split."""
    from gateway.engine.loader import load_model
    from gateway.engine.provision import provision

    loaded = load_model(provision(args.model), served_name(args.model))
    build_corpus(loaded, args.max_tokens, args.max_batch, args.corpus, args.split)
    if args.extra:
        from lab.eval.augment import augment_corpus

        done = augment_corpus(loaded, args.corpus, args.split, args.extra_limit)
        print(f"corpus {args.corpus}: extra pass on {done} generations")
    counts = Counter((e.split, label.kind) for e, label in labelled_entries(args.corpus))
    print(f"corpus {args.corpus} at {corpus_dir(args.corpus)}: {dict(sorted(counts.items()))}")

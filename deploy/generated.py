"""Files generated from sources in this repository: write them, or with ``check`` list the stale ones."""

import sys
from pathlib import Path


def sync_generated(outputs: dict[Path, str], check: bool) -> int:
    """Write each path's text; with ``check``, write nothing and return 1 if any file differs."""
    stale = []
    for path, text in outputs.items():
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{path} is stale: run `make generate`", file=sys.stderr)
    return 1 if stale else 0

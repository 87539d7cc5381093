"""Healthy human-written text for the negative set: Python standard-library source and package READMEs.

Each document ships with the interpreter or an installed package (nothing is downloaded), is cut to
its first ``DOCUMENT_TOKENS`` tokens and teacher-forced through the model as the answer to a request for
it, exactly as ``--backend openai --reader`` would read an upstream's answer. Nobody wrote these to loop:
every token is healthy, which labels them for free. Documents alternate between the tune and test splits.
"""

import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["DOCUMENT_TOKENS", "HumanDocument", "human_documents"]

DOCUMENT_TOKENS = 900

STDLIB_MODULES = (
    "textwrap.py",
    "json/decoder.py",
    "csv.py",
    "string.py",
    "heapq.py",
    "bisect.py",
    "fractions.py",
    "shlex.py",
    "glob.py",
    "fnmatch.py",
    "colorsys.py",
    "queue.py",
    "sched.py",
    "difflib.py",
    "contextlib.py",
    "dataclasses.py",
)
PACKAGES = ("fastapi", "httpx", "pydantic", "uvicorn", "prometheus_client", "numpy", "openai", "starlette")


@dataclass(frozen=True)
class HumanDocument:
    """A document, the request it answers, its kind (``human_code`` or ``human_docs``) and split."""

    id: str
    split: str
    kind: str
    messages: tuple[dict, ...]
    text: str


def _readme(package: str) -> str | None:
    """The long description (README) in a package's installed METADATA, if it has one."""
    try:
        raw = metadata.distribution(package).read_text("METADATA") or ""
    except metadata.PackageNotFoundError:
        return None
    _, _, body = raw.partition("\n\n")
    return body.strip() or None


def human_documents() -> list[HumanDocument]:
    """Every available document, in a fixed order (a missing module or package is skipped)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, str, str]] = []
    for module in STDLIB_MODULES:
        path = stdlib / module
        if path.is_file():
            request = f"Show me the source code of the Python standard library file {module}."
            found.append(("human_code", request, path.read_text()))
    for package in PACKAGES:
        readme = _readme(package)
        if readme:
            found.append(("human_docs", f"Write the README of the Python package {package}.", readme))
    return [
        HumanDocument(
            id=f"human-{i:03d}",
            split="tune" if i % 2 == 0 else "test",
            kind=kind,
            messages=({"role": "user", "content": request},),
            text=text,
        )
        for i, (kind, request, text) in enumerate(found)
    ]

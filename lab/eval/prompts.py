"""Prompt sets shipped with the package (``monitors/data/*.jsonl``), split by prompt into tune and test."""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["PromptCase", "load_prompts"]


@dataclass(frozen=True)
class PromptCase:
    """One prompt: chat messages (or raw text), its split, its kind, and optional sampling overrides."""

    id: str
    split: str
    kind: str
    messages: tuple[dict, ...]
    params: dict

    @classmethod
    def from_json(cls, row: dict) -> "PromptCase":
        return cls(row["id"], row["split"], row["kind"], tuple(row["messages"]), row.get("params", {}))


def load_prompts(name_or_path: str, split: str | None = None) -> list[PromptCase]:
    """Load a shipped prompt set by name (``normal``) or a JSONL file, optionally one split only."""
    path = Path(name_or_path)
    if not path.is_file():
        path = Path(str(resources.files("monitors") / "data" / f"prompts_{name_or_path}.jsonl"))
    cases = [PromptCase.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return [c for c in cases if split is None or c.split == split]

"""Paths in benchmark results that mean something on another machine: shared by the benchmarks
that write run folders, shard folders or ../shared paths into their JSON (imported as a sibling
module, as machine_load.py is)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def portable(value, root: Path = ROOT):
    """`value` (JSON-like) with every absolute path rewritten, keys included: inside the repository
    relative to it, inside ../shared as ../shared/..., elsewhere (a temporary folder) as <elsewhere>/NAME."""
    if isinstance(value, dict):
        return {portable(key, root): portable(item, root) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item, root) for item in value]
    if not isinstance(value, str) or not os.path.isabs(value) or "\n" in value:
        return value
    path, shared = Path(os.path.normpath(value)), root.parent / "shared"
    if path.is_relative_to(root):
        return str(path.relative_to(root)) or "."
    if path.is_relative_to(shared):
        return str(Path("../shared") / path.relative_to(shared))
    return f"<elsewhere>/{path.name}"

"""benchmarks/portable_paths.py: results JSON carries no path of the machine that wrote it."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from portable_paths import portable  # noqa: E402


def test_paths_become_relative_to_the_repository_or_shared_and_others_lose_their_folder():
    root = Path("/somewhere/repo")
    written = {"run": "/somewhere/repo/runs/a", "/somewhere/repo/tfrecords/x": {"towers": ["/somewhere/shared/weights/t"]},
               "tmp": "/tmp/tmpab12/bert_base", "plain": "runs/b", "count": 3, "text": "a / b", "repo": "/somewhere/repo"}
    assert portable(written, root) == {"run": "runs/a", "tfrecords/x": {"towers": ["../shared/weights/t"]},
                                       "tmp": "<elsewhere>/bert_base", "plain": "runs/b", "count": 3, "text": "a / b",
                                       "repo": "."}

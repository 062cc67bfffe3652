"""files.portable_paths: benchmark results carry no path of the machine that wrote them."""

from pathlib import Path

from dual_encoder.files import portable_paths


def test_paths_become_relative_to_the_repository_or_shared_and_others_lose_their_folder():
    root = Path("/somewhere/repo")
    written = {"run": "/somewhere/repo/runs/a", "/somewhere/repo/tfrecords/x": {"towers": ["/somewhere/shared/weights/t"]},
               "tmp": "/tmp/tmpab12/bert_base", "plain": "runs/b", "count": 3, "text": "a / b", "repo": "/somewhere/repo"}
    assert portable_paths(written, root) == {"run": "runs/a", "tfrecords/x": {"towers": ["../shared/weights/t"]},
                                             "tmp": "<elsewhere>/bert_base", "plain": "runs/b", "count": 3, "text": "a / b",
                                             "repo": "."}

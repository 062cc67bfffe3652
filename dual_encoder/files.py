"""Files that are either whole or absent, and digests of JSON-able values.

Every writer of this package (shards and their sidecars, the feature cache, the embedding cache,
resume state) writes under a unique temporary name beside the target and renames it when done,
so a reader, a rerun or a second writer never sees half a file, whatever killed the first one
(even `kill -9`). Temporaries carry `TMP_MARK` so that their owners can delete stale ones. Paths
go through `tf.io.gfile`, so shard folders on gs:// or hdfs:// work too. Imports no stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Optional, Union

TMP_MARK = ".tmp-"
REPOSITORY = Path(__file__).resolve().parents[1]  # the checkout, beside ../shared
TREE_CHECKSUMS = "dual_encoder_checksums.json"  # a folder's record of `tree_sha256`, kept inside it


def _gfile():
    import tensorflow as tf  # only when writing: config and --help need no TensorFlow

    return tf.io.gfile


def temporary_name(path: Union[str, os.PathLike], suffix: str = "") -> str:
    """`path` + TMP_MARK + 12 random hex digits: unique per writer, found by the mark. With
    `suffix`, the temporary keeps that ending (Keras wants `.weights.h5` and `.keras` names)."""
    path = os.fspath(path)
    stem = path.removesuffix(suffix) if suffix else path
    return f"{stem}{TMP_MARK}{uuid.uuid4().hex[:12]}{suffix}"


def file_sha256(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """sha256 of a local file, read in chunks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def writing(path: Union[str, os.PathLike]) -> Iterator[str]:
    """A temporary path to write `path` through (for writers that want a path, such as
    `tf.io.TFRecordWriter`); renamed to `path` when the block ends without an exception."""
    tmp = temporary_name(path)
    yield tmp
    _gfile().rename(tmp, os.fspath(path), overwrite=True)


@contextlib.contextmanager
def writing_folder(path: Union[str, os.PathLike]) -> Iterator[str]:
    """A temporary sibling folder (not yet created) to write the local folder `path` through; when
    the block ends without an exception it replaces `path` by renames, so readers and a rerun see
    the old folder or the new one, never a mix. Leftovers are removed either way."""
    import shutil

    tmp, old = temporary_name(path), temporary_name(path)
    try:
        yield tmp
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)


def write_atomic(path: Union[str, os.PathLike], data: Union[bytes, str]) -> None:
    """Writes `data` (bytes, or text as UTF-8) to `path`: temporary name, then rename."""
    with writing(path) as tmp, _gfile().GFile(tmp, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)


def write_json(path: Union[str, os.PathLike], value, indent: Optional[int] = 2) -> None:
    """`value` as JSON (values JSON lacks written as str), atomically."""
    write_atomic(path, json.dumps(value, indent=indent, default=str))


def tree_sha256(folder: Union[str, os.PathLike], leave_out: tuple = ()) -> dict[str, str]:
    """sha256 of every file below a local `folder`, by relative path: a record to check it against later."""
    folder = os.fspath(folder)
    digests = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative not in leave_out:
                digests[relative] = file_sha256(path)
    return dict(sorted(digests.items()))


def changed_files(folder: Union[str, os.PathLike], recorded: dict[str, str]) -> list[str]:
    """The files of `recorded` that are missing below `folder` or differ from their recorded sha256."""
    changed = []
    for relative, digest in recorded.items():
        path = os.path.join(os.fspath(folder), relative)
        try:
            same = file_sha256(path) == digest
        except OSError:
            same = False
        if not same:
            changed.append(relative)
    return changed


def json_digest(value, algorithm: str = "sha256", length: Optional[int] = None) -> str:
    """Hex digest of `value` as JSON with sorted keys (values JSON lacks as str): the same
    content gives the same key on any machine and in any process. `length` cuts it short."""
    digest = hashlib.new(algorithm, json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return digest[:length] if length else digest


def portable_paths(value, root: Optional[Path] = None):
    """`value` (JSON-like) with every absolute path rewritten, keys included: inside the repository
    relative to it (default: this checkout), inside ../shared as ../shared/..., elsewhere (a temporary
    folder) as <elsewhere>/NAME: benchmark results that mean something on another machine."""
    root = REPOSITORY if root is None else root
    if isinstance(value, dict):
        return {portable_paths(key, root): portable_paths(item, root) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_paths(item, root) for item in value]
    if not isinstance(value, str) or not os.path.isabs(value) or "\n" in value:
        return value
    path, shared = Path(os.path.normpath(value)), root.parent / "shared"
    if path.is_relative_to(root):
        return str(path.relative_to(root)) or "."
    if path.is_relative_to(shared):
        return str(Path("../shared") / path.relative_to(shared))
    return f"<elsewhere>/{path.name}"

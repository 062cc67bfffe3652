"""An index folder: the embeddings of a photo folder, kept up to date, searchable by text.

    INDEX/manifest.json    model fingerprint, image root, backend, size, recall@10 against exact
    INDEX/keys.json        each image's path relative to the root, and its size|mtime version
    INDEX/embeddings.npy   float32 [N, D], L2-normalised, in the order of keys.json
    INDEX/backend.bin      the backend's own file (exact: the embeddings; FAISS: its index)

Building again embeds only new or changed files (a version differs) and drops deleted ones. An
index is one model's: a different model is refused (or, asked to rebuild, starts afresh), never
mixed. The new folder is written beside the old one and swapped in by renames, so a build
killed at any point (even kill -9) leaves the old index whole (killed between the two renames:
whole under a temporary name, which the next build puts back) and a rerun finishes the job.
One builder at a time: `INDEX.writer.lock` beside the folder (flock, released even by kill -9).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from dual_encoder import files
from dual_encoder.data.folder_lock import folder_lock
from dual_encoder.data.records import SkipCounter
from dual_encoder.errors import DualEncoderError, InvalidArgumentError
from dual_encoder.evaluation import runs
from dual_encoder.evaluation.retrieval import EmbeddingCache, file_key, file_version
from dual_encoder.search.backends import BackendConfig, ExactBackend, build_backend, choose_backend, load_backend, recall_at

MANIFEST, KEYS, VECTORS, BACKEND_FILE = "manifest.json", "keys.json", "embeddings.npy", "backend.bin"
LOCK_SUFFIX = ".writer.lock"  # INDEX.writer.lock beside the folder: one builder at a time
FORMAT = 1
RECALL_QUERIES = 256  # stored vectors with noise, as stand-ins for queries near the data
RECALL_NOISE = 0.1


class IndexMismatchError(DualEncoderError, ValueError):
    """The index folder was built with another model (or is not an index folder)."""


@dataclasses.dataclass
class PhotoIndex:
    root: Path
    paths: list  # relative to root
    versions: list  # "size|mtime_ns" per path
    vectors: np.ndarray
    backend: object
    manifest: dict

    def __len__(self) -> int:
        return len(self.paths)

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, float]]]:
        """Per query, (path relative to the root, cosine) of the best `k` images, best first."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidArgumentError(f"top_k must be an integer >= 1, got {k!r}")
        scores, rows = self.backend.search(np.atleast_2d(queries).astype(np.float32), int(k))
        return [[(self.paths[r], float(s)) for s, r in zip(score_row, row) if r >= 0] for score_row, row in zip(scores, rows)]

    def search_text(self, embedder, query: str, k: int = 10) -> list[tuple[str, float]]:
        if not isinstance(query, str) or not query.strip():
            raise InvalidArgumentError(f"the search query must be non-empty text, got {query!r:.60}")
        return self.search_vectors(embedder.encode_texts([query]), k)[0]


def load_index(index_path, expected_fingerprint: Optional[str] = None, with_backend: bool = True) -> PhotoIndex:
    """The index folder at `index_path`; with `expected_fingerprint`, refused if built by another model.
    `with_backend=False` skips reading the backend file (an update only reuses the vectors)."""
    folder = Path(index_path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        keys = json.loads((folder / KEYS).read_text())
        vectors = np.load(folder / VECTORS)
    except (OSError, ValueError) as error:
        raise IndexMismatchError(f"--index {folder}: not a complete index folder ({error}); build it with "
                                 "evaluate.py index --model M --images DIR --index PATH") from None
    if expected_fingerprint is not None and manifest.get("model_fingerprint") != expected_fingerprint:
        raise IndexMismatchError(f"--index {folder} was built with another model ({manifest.get('model', {}).get('path')}); "
                                 "search it with that model, or build it again with --rebuild")
    backend = load_backend(manifest["backend"], str(folder / BACKEND_FILE)) if with_backend else None
    return PhotoIndex(Path(manifest["root"]), keys["paths"], keys["versions"], vectors, backend, manifest)


def index_model(index_path) -> str:
    """The --model an index folder was built with (its SavedModel path or keras-hub preset), so
    `evaluate.py search "q" --index PATH` needs no --model."""
    folder = Path(index_path)
    try:
        model = json.loads((folder / MANIFEST).read_text()).get("model", {})
    except (OSError, ValueError) as error:
        raise IndexMismatchError(f"--index {folder}: not a complete index folder ({error}); build it with "
                                 "evaluate.py index --model M --images DIR --index PATH") from None
    spec = model.get("path") or model.get("preset") if isinstance(model, dict) else None
    if not spec:
        raise IndexMismatchError(f"--index {folder}: its manifest names no model; pass --model (the one it was built with)")
    return str(spec)


def _reusable(index_path: Path, fingerprint: str, rebuild: bool) -> dict:
    """{relative path: (version, vector)} from the existing index that this model may reuse."""
    if not (index_path / MANIFEST).exists():
        if index_path.exists() and any(index_path.iterdir()):
            raise IndexMismatchError(f"--index {index_path}: exists and is not an index folder; pass an empty or new folder")
        return {}
    try:
        old = load_index(index_path, fingerprint, with_backend=False)
    except IndexMismatchError:
        if rebuild:
            return {}
        raise
    return {p: (v, vec) for p, v, vec in zip(old.paths, old.versions, old.vectors)}


def _write_folder(index_path: Path, manifest: dict, paths: list, versions: list, vectors: np.ndarray, backend) -> None:
    """Everything into a sibling temporary folder, then renamed over the old one."""
    with files.writing_folder(index_path) as folder:
        tmp = Path(folder)
        tmp.mkdir(parents=True)
        np.save(tmp / VECTORS, vectors)
        backend.save(str(tmp / BACKEND_FILE))
        files.write_json(tmp / KEYS, {"paths": paths, "versions": versions})
        files.write_json(tmp / MANIFEST, manifest)  # last: a folder with a manifest is complete


def build_index(embedder, images, index_path, backend: str = "auto", rebuild: bool = False,
                config: BackendConfig = BackendConfig(), cache: Optional[EmbeddingCache] = None) -> tuple[PhotoIndex, dict]:
    """Builds or updates the index of the folder `images` at `index_path`; returns (index, report).
    The report counts what was embedded, reused, removed and skipped (unreadable images). With an
    embedding `cache` (this model's), files the index lacks are looked up there first (a rebuild
    after a lost index embeds nothing again), and its entries for deleted or changed files below
    `images` are dropped with them."""
    root, index_path = Path(images).resolve(), Path(index_path)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(str(index_path.parent), index_path.name + LOCK_SUFFIX):
        _clear_leftovers(index_path)
        return _build_locked(embedder, root, index_path, backend, rebuild, config, cache)


def _clear_leftovers(index_path: Path) -> None:
    """A build killed between its two renames leaves the index only under a temporary name: put
    the newest complete one back, then delete every leftover (safe: the caller holds the lock)."""
    leftovers = [Path(p) for p in glob.glob(glob.escape(str(index_path)) + files.TMP_MARK + "*")]
    complete = sorted((p for p in leftovers if (p / MANIFEST).is_file()), key=lambda p: (p / MANIFEST).stat().st_mtime_ns)
    if not index_path.exists() and complete:
        os.replace(complete[-1], index_path)
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)


def _build_locked(embedder, root: Path, index_path: Path, backend: str, rebuild: bool, config: BackendConfig,
                  cache: Optional[EmbeddingCache]) -> tuple[PhotoIndex, dict]:
    fingerprint = embedder.fingerprint()
    reusable = _reusable(index_path, fingerprint, rebuild)
    skipped = SkipCounter()
    listed = sorted(runs.list_images(root, skipped))
    paths = [os.path.relpath(p, root) for p in listed]
    versions = [file_version(p) for p in listed]  # one stat per file: the cache keys are built from these
    cache_keys = [file_key(p, v) for p, v in zip(listed, versions)]
    fresh = [i for i, (p, v) in enumerate(zip(paths, versions)) if reusable.get(p, (None,))[0] != v]
    sources, keys = [listed[i] for i in fresh], [cache_keys[i] for i in fresh]
    from_cache = 0 if cache is None else sum(key in cache for key in keys)
    vectors, ok = runs.embed_images(embedder, sources, keys, [paths[i] for i in fresh], cache, skipped)
    if cache is not None:
        cache.drop_files_below(root, keep=cache_keys)
        cache.save()
    embedded = dict(zip([i for i, k in zip(fresh, ok) if k], vectors))
    unreadable = set(fresh) - set(embedded)
    keep = [i for i in range(len(paths)) if i not in unreadable]
    if not keep:
        raise runs.EvaluationError(f"none of the {len(paths)} images in {root} could be read (skipped: {skipped.as_dict()})")
    matrix = np.stack([embedded[i] if i in embedded else reusable[paths[i]][1] for i in keep]).astype(np.float32)
    name = choose_backend(backend, len(keep), config)
    built = build_backend(name, matrix, config)
    rng = np.random.default_rng(0)
    sample = matrix[rng.choice(len(matrix), min(RECALL_QUERIES, len(matrix)), replace=False)]
    queries = sample + rng.normal(0, RECALL_NOISE, sample.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    report = {"images": len(keep), "embedded": len(embedded) - from_cache, "from_cache": from_cache,
              "reused": len(keep) - len(embedded),
              "removed": len(set(reusable) - set(paths)), "skipped": skipped.as_dict(), "backend": name,
              "recall_at_10": recall_at(built, ExactBackend(matrix), queries, 10)}
    manifest = {"format": FORMAT, "root": str(root), "model": embedder.describe(), "model_fingerprint": fingerprint,
                "backend": name, "size": len(keep), "dim": int(matrix.shape[1]),
                "recall_at_10": report["recall_at_10"], "skipped": report["skipped"],
                "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    kept_paths, kept_versions = [paths[i] for i in keep], [versions[i] for i in keep]
    _write_folder(index_path, manifest, kept_paths, kept_versions, matrix, built)
    return PhotoIndex(root, kept_paths, kept_versions, matrix, built, manifest), report

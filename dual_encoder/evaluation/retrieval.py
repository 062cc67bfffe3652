"""Embedding index, top-K search, Recall@K both ways, and an on-disk embedding cache.

Conventions (the ones open_clip and the COCO retrieval literature use):
- Embeddings are L2-normalised, so a dot product is the cosine similarity.
- Ranks are 1-based. A rank counts the candidates scoring *strictly* higher than the correct one,
  plus one, so ties are resolved in the model's favour (exact ties are rare with float scores).
- text -> image: every caption is a query; its image must rank within K.
- image -> text: every image is a query; it is a hit if *any* of its captions ranks within K
  (rank = best rank among its captions, other images' captions being the competitors).
- top-N pair accuracy: the first caption of each image as the query, its image within the top N
  images (the measure of the keras.io dual-encoder example, kept for comparison).
"""

from __future__ import annotations

import hashlib
import io
import logging
import numbers
import os
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from dual_encoder import files
from dual_encoder.errors import InvalidArgumentError, WrongTypeError

logger = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)
PAIR_ACCURACY_AT = (1, 100)
_CHUNK_ROWS = 1024  # query rows scored at once: bounds scratch memory for large sets




def check_top_k(top_k) -> int:
    """`top_k` as a plain int >= 1, or an error saying so (numpy's own is about broadcasting shapes)."""
    if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool):
        raise WrongTypeError(f"top_k must be an integer, got {type(top_k).__name__} {top_k!r:.40}")
    if top_k < 1:
        raise InvalidArgumentError(f"top_k must be at least 1, got {top_k}")
    return int(top_k)


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row, best first: (scores [Q, k], indices [Q, k])."""
    n = scores.shape[1]
    k = min(k, n)
    if k < n:  # partitioning for the top end avoids negating (copying) the whole score block
        part = np.argpartition(scores, n - k, axis=1)[:, n - k :]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


class EmbeddingIndex:
    """Exact (brute-force) cosine search over stored embeddings.

    Stored rows are scored in chunks and the per-chunk top-K merged, so searching 1M stored
    embeddings needs only the embeddings themselves plus a [queries, chunk] score block.
    """

    def __init__(self, embeddings: np.ndarray, keys: Optional[Sequence] = None, chunk: int = 65536):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.keys = list(keys) if keys is not None else list(range(len(self.embeddings)))
        self.chunk = chunk

    def __len__(self) -> int:
        return len(self.embeddings)

    def _checked_queries(self, queries) -> np.ndarray:
        """Queries as float32 [Q, D] with the stored width D, or an error saying what was expected."""
        try:
            if queries is None or isinstance(queries, (str, bytes)):
                raise TypeError("not numbers")
            queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        except (TypeError, ValueError):
            raise WrongTypeError(f"queries must be embeddings (an array [Q, D] of numbers), got {type(queries).__name__}; "
                                 "embed text with embedder.encode_texts([...])") from None
        width = self.embeddings.shape[1] if len(self.embeddings) and self.embeddings.ndim == 2 else None  # None: empty
        if queries.ndim != 2 or (width is not None and queries.shape[1] != width):
            raise InvalidArgumentError(f"queries have shape {queries.shape}, but this index holds {width}-dimensional "
                                       f"embeddings: pass [Q, {width}] (embedder.encode_texts of the same model)")
        return queries

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], indices [Q, k]) of the best stored rows for each query, best first.

        After the first chunk each query has a k-th best score; later chunks keep only the
        columns that beat it for some query (usually a handful), so the costly top-k selection
        runs once and the rest is a matrix product and a comparison per chunk.
        """
        k = min(check_top_k(k), len(self.embeddings))
        queries = self._checked_queries(queries)
        best_scores = np.zeros((len(queries), 0), np.float32)
        best_index = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(self.embeddings), self.chunk):
            block = queries @ self.embeddings[start : start + self.chunk].T
            columns = np.arange(block.shape[1])
            if best_scores.shape[1] == k:
                columns = np.flatnonzero((block > best_scores[:, -1:]).any(axis=0))
                block = block[:, columns]
            candidates = np.broadcast_to(columns + start, block.shape)
            best_scores, picked = top_k(np.concatenate([best_scores, block], axis=1), k)
            best_index = np.take_along_axis(np.concatenate([best_index, candidates], axis=1), picked, axis=1)
        return best_scores, best_index


def flatten_captions(captions_per_image: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """All captions in one list plus, for each, the index of its image."""
    texts, owner = [], []
    for image_index, captions in enumerate(captions_per_image):
        texts.extend(captions)
        owner.extend([image_index] * len(captions))
    return texts, np.asarray(owner, dtype=np.int64)


def text_to_image_ranks(image_emb: np.ndarray, text_emb: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Rank of each caption's own image among all images."""
    ranks = np.empty(len(text_emb), dtype=np.int64)
    for start in range(0, len(text_emb), _CHUNK_ROWS):
        sim = text_emb[start : start + _CHUNK_ROWS] @ image_emb.T
        own = owner[start : start + _CHUNK_ROWS]
        correct = sim[np.arange(len(sim)), own]
        ranks[start : start + len(sim)] = 1 + (sim > correct[:, None]).sum(axis=1)
    return ranks


def image_to_text_ranks(image_emb: np.ndarray, text_emb: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Best rank of any of an image's captions among all captions."""
    if len(image_emb) and np.bincount(owner, minlength=len(image_emb)).min() == 0:
        raise InvalidArgumentError("every image needs at least one caption for image->text retrieval")
    ranks = np.empty(len(image_emb), dtype=np.int64)
    for start in range(0, len(image_emb), _CHUNK_ROWS):
        sim = image_emb[start : start + _CHUNK_ROWS] @ text_emb.T
        mine = owner[None, :] == np.arange(start, start + len(sim))[:, None]
        best_own = np.where(mine, sim, -np.inf).max(axis=1)
        ranks[start : start + len(sim)] = 1 + ((sim > best_own[:, None]) & ~mine).sum(axis=1)
    return ranks


def rank_summary(ranks: np.ndarray, recall_at: Sequence[int] = RECALL_AT) -> dict:
    summary = {f"R@{k}": float(np.mean(ranks <= k)) for k in recall_at}
    summary["mean_rank"] = float(np.mean(ranks))
    summary["median_rank"] = float(np.median(ranks))
    return summary


def retrieval_report(image_emb: np.ndarray, text_emb: np.ndarray, owner: np.ndarray) -> dict:
    """The retrieval keys of report.json. `owner[t]` is the image index of caption t."""
    owner = np.asarray(owner, dtype=np.int64)
    t2i = text_to_image_ranks(image_emb, text_emb, owner)
    i2t = image_to_text_ranks(image_emb, text_emb, owner)
    _, first_caption = np.unique(owner, return_index=True)
    report = {
        "num_images": int(len(image_emb)),
        "num_captions": int(len(text_emb)),
        "text_to_image": rank_summary(t2i),
        "image_to_text": rank_summary(i2t),
    }
    for n in PAIR_ACCURACY_AT:
        report[f"top{n}_pair_accuracy"] = float(np.mean(t2i[first_caption] <= n))
    return report


# --- on-disk cache -------------------------------------------------------------------------------


def file_version(path) -> str:
    """size|mtime of a file: a changed size or mtime is a new version."""
    stat = os.stat(path)
    return f"{stat.st_size}|{stat.st_mtime_ns}"


def file_key(path, version: Optional[str] = None) -> str:
    """Identifies one version of a file (`version` as `file_version` gave it, else read now)."""
    return f"{os.path.abspath(path)}|{version if version is not None else file_version(path)}"


def text_key(text: str) -> str:
    return "text:" + hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings of one model, keyed by item (see `file_key`, `text_key`), in one .npz file.

    The file name is a hash of the model fingerprint (model path, its mtime, preprocessing), so
    a retrained or differently preprocessed model never reads stale vectors.
    """

    def __init__(self, directory, model_fingerprint: str):
        digest = hashlib.sha1(model_fingerprint.encode("utf-8")).hexdigest()[:20]
        self.path = Path(directory) / f"embeddings-{digest}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as stored:
                    self._vectors = dict(zip(stored["keys"].tolist(), stored["vectors"]))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # truncated, foreign, corrupt
                logger.warning("embedding cache %s is unreadable (%s): computing the embeddings again", self.path,
                               str(error).splitlines()[0] if str(error) else type(error).__name__)
                self._vectors = {}

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, key: str) -> bool:
        return key in self._vectors

    def get(self, key: str) -> Optional[np.ndarray]:
        return self._vectors.get(key)

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        for key, vector in zip(keys, vectors):
            self._vectors[key] = np.asarray(vector, dtype=np.float32)
        self._dirty = self._dirty or len(keys) > 0

    def drop_files_below(self, folder, keep: Sequence[str]) -> int:
        """Forgets the file entries below `folder` that are not in `keep` (the current versions of
        the files there), so deleted and replaced photos leave the cache too; returns how many."""
        prefix, keep = os.path.join(os.path.abspath(folder), ""), set(keep)
        stale = [key for key in self._vectors if key.startswith(prefix) and key not in keep]
        for key in stale:
            del self._vectors[key]
        self._dirty = self._dirty or bool(stale)
        return len(stale)

    def save(self) -> None:
        """Writes atomically (temp file + rename), so a crash never leaves a broken cache."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys, buffer = list(self._vectors), io.BytesIO()
        vectors = np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
        np.savez(buffer, keys=np.asarray(keys, dtype=str), vectors=vectors)
        files.write_atomic(self.path, buffer.getvalue())  # two runs at once never share a temporary
        self._dirty = False


def encode_cached(
    keys: Sequence[str],
    encode_missing: Callable[[list[int]], tuple[np.ndarray, np.ndarray]],
    cache: Optional[EmbeddingCache],
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings for `keys`, computing only those not cached.

    `encode_missing(indices)` returns (vectors for the ones it could encode, a bool mask over
    `indices` of which those were). Returns (vectors [kept, D], kept mask over `keys`).
    """
    missing = [i for i, key in enumerate(keys) if cache is None or key not in cache]
    fresh: dict[int, np.ndarray] = {}
    if missing:
        vectors, ok = encode_missing(missing)
        fresh = dict(zip(np.asarray(missing)[ok].tolist(), vectors))
        if cache is not None:
            cache.put([keys[i] for i in fresh], np.asarray(list(fresh.values())))
            cache.save()
    rows, kept = [], np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        vector = fresh.get(i) if i in fresh else (cache.get(key) if cache is not None else None)
        if vector is not None:
            rows.append(vector)
            kept[i] = True
    return (np.stack(rows) if rows else np.zeros((0, 0), np.float32)), kept

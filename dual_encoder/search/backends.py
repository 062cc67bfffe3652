"""Nearest-neighbour backends behind one interface: exact search, and FAISS for large collections.

All of them search L2-normalised embeddings by inner product (= cosine) and return
(scores [Q, k'], rows [Q, k']) best first, k' = min(k, stored vectors). `exact` is the
chunked matrix product of `evaluation.retrieval.EmbeddingIndex`; `hnsw` (FAISS HNSW over
float16 copies of the vectors, IndexHNSWSQ) serves up to tens of millions of vectors at a small
loss of recall; `ivfpq` (FAISS IVF-PQ)
compresses beyond that. `auto` picks by size, `faiss` one of the two FAISS ones (`choose_backend`). Each backend saves to and
loads from one file, so an index folder can be swapped in whole.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from dual_encoder.errors import InvalidArgumentError
from dual_encoder.evaluation.retrieval import EmbeddingIndex

BACKENDS = ("auto", "exact", "faiss", "hnsw", "ivfpq")  # faiss: HNSW or IVF-PQ by size, even below exact_below
HNSW_STORAGE = ("float32", "float16", "8bit")  # what the HNSW graph's nodes keep of each vector


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """Sizes at which `auto` switches, and the FAISS parameters (open_clip/clip-retrieval users
    tune the same ones: HNSW's M and efSearch, IVF's lists and probes, PQ's sub-vectors)."""

    exact_below: int = 20_000  # exact search over 20k x 256-d takes ~1 ms per query here: no need to approximate
    ivfpq_from: int = 20_000_000  # HNSW keeps full vectors (1 KiB each at 256-d) up to here
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    # Half the bytes to fetch per visited node, at no measurable loss of recall: at 1M clustered
    # vectors here efSearch 64 took 8.9 ms per 64 queries at recall@10 0.979 over float16 against
    # 12.5 ms at 0.980 over float32 (benchmarks/search_latency.py), and builds in 210 s, not 300.
    hnsw_storage: str = "float16"
    ivf_lists_per_sqrt: int = 4  # nlist = 4 * sqrt(n)
    ivf_train_per_list: int = 64  # k-means on <= 64 x nlist sampled vectors: 256k of 1M (FAISS's 256 x nlist: all, 4x the time)
    ivf_probes: int = 32
    pq_subvectors: int = 32


def choose_backend(name: str, size: int, config: BackendConfig = BackendConfig()) -> str:
    """The backend `name` stands for at `size` vectors (auto: exact, then hnsw, then ivfpq; faiss: hnsw, then ivfpq)."""
    if name not in BACKENDS:
        raise InvalidArgumentError(f"--backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "faiss":
        return "hnsw" if size < config.ivfpq_from else "ivfpq"
    if name != "auto":
        return name
    return "exact" if size < config.exact_below else choose_backend("faiss", size, config)


class ExactBackend:
    name = "exact"

    def __init__(self, vectors: np.ndarray):
        self.index = EmbeddingIndex(vectors)

    def search(self, queries: np.ndarray, k: int):
        return self.index.search(queries, k)

    def save(self, path: str) -> None:
        with open(path, "wb") as handle:  # np.save on a name would append .npy
            np.save(handle, self.index.embeddings)

    @classmethod
    def load(cls, path: str) -> "ExactBackend":
        return cls(np.load(path))


class FaissBackend:
    """A FAISS index of inner products (cosine on normalised vectors)."""

    def __init__(self, name: str, index, config: BackendConfig = BackendConfig()):
        self.name, self.index, self.config = name, index, config
        self._tune()

    @classmethod
    def build(cls, name: str, vectors: np.ndarray, config: BackendConfig = BackendConfig()) -> "FaissBackend":
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = vectors.shape[1]
        if name == "hnsw":
            index = _hnsw_index(faiss, dim, config)
            index.hnsw.efConstruction = config.hnsw_ef_construction
            index.train(vectors)  # float16 and float32 need none; 8 bit learns each dimension's range
        else:
            lists = max(1, min(len(vectors) // 39, int(config.ivf_lists_per_sqrt * np.sqrt(len(vectors)))))
            subvectors = next(m for m in (config.pq_subvectors, 16, 8, 4, 2, 1) if dim % m == 0)
            index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, lists, subvectors, 8, faiss.METRIC_INNER_PRODUCT)
            index.cp.max_points_per_centroid = config.ivf_train_per_list  # FAISS samples the training set down to this
            index.train(vectors)
        index.add(vectors)
        return cls(name, index, config)

    def _tune(self) -> None:
        if self.name == "hnsw":
            self.index.hnsw.efSearch = self.config.hnsw_ef_search
        else:
            self.index.nprobe = self.config.ivf_probes

    def search(self, queries: np.ndarray, k: int):
        k = min(k, self.index.ntotal)
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows.astype(np.int64)

    def save(self, path: str) -> None:
        _faiss().write_index(self.index, path)

    @classmethod
    def load(cls, name: str, path: str, config: BackendConfig = BackendConfig()) -> "FaissBackend":
        return cls(name, _faiss().read_index(path), config)


def _hnsw_index(faiss, dim: int, config: BackendConfig):
    if config.hnsw_storage not in HNSW_STORAGE:
        raise InvalidArgumentError(f"hnsw_storage {config.hnsw_storage!r}: choose one of {', '.join(HNSW_STORAGE)}")
    if config.hnsw_storage == "float32":
        return faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    kind = faiss.ScalarQuantizer.QT_fp16 if config.hnsw_storage == "float16" else faiss.ScalarQuantizer.QT_8bit
    return faiss.IndexHNSWSQ(dim, kind, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)


def _faiss():
    try:
        import faiss
    except ImportError as error:  # an install without the dependency: say what to do
        raise InvalidArgumentError(f"the FAISS backends need faiss-cpu (pip install faiss-cpu): {error}") from None
    return faiss


def build_backend(name: str, vectors: np.ndarray, config: BackendConfig = BackendConfig()):
    """A backend over `vectors` ([N, D] float32, L2-normalised); `name` as chosen by choose_backend."""
    return ExactBackend(vectors) if name == "exact" else FaissBackend.build(name, vectors, config)


def load_backend(name: str, path: str, config: BackendConfig = BackendConfig()):
    return ExactBackend.load(path) if name == "exact" else FaissBackend.load(name, path, config)


def recall_at(backend, exact: ExactBackend, queries: np.ndarray, k: int = 10) -> Optional[float]:
    """Share of exact search's top-k that `backend` also returns (1.0 for exact itself)."""
    if backend.name == "exact" or not len(queries):
        return 1.0
    _, truth = exact.search(queries, k)
    _, found = backend.search(queries, k)
    return float(np.mean([len(set(t) & set(f)) / max(1, len(t)) for t, f in zip(truth, found)]))

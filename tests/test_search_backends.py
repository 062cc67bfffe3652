"""FAISS backends: BackendConfig's tuning reaches the index (benchmarks/search_latency.py measures it)."""

import numpy as np
import pytest

from dual_encoder.errors import InvalidArgumentError
from dual_encoder.search import backends


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    vectors = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_ivfpq_trains_its_lists_on_a_sample_of_at_most_ivf_train_per_list_vectors_each():
    vectors = clustered(2000)
    config = backends.BackendConfig(ivf_train_per_list=40, pq_subvectors=4)  # few sub-quantizers to train: quick
    backend = backends.FaissBackend.build("ivfpq", vectors, config)
    assert backend.index.cp.max_points_per_centroid == 40  # FAISS samples 40 x nlist vectors for its k-means
    assert (backend.index.is_trained, backend.index.ntotal) == (True, 2000)
    assert backends.BackendConfig().ivf_train_per_list == 64


def test_hnsw_search_width_comes_from_the_config_also_after_loading(tmp_path):
    vectors = clustered(2000)
    backend = backends.FaissBackend.build("hnsw", vectors, backends.BackendConfig(hnsw_ef_search=24))
    assert backend.index.hnsw.efSearch == 24
    backend.save(str(tmp_path / "b.bin"))
    assert backends.load_backend("hnsw", str(tmp_path / "b.bin")).index.hnsw.efSearch == backends.BackendConfig().hnsw_ef_search
    queries = vectors[:50]
    assert backends.recall_at(backend, backends.ExactBackend(vectors), queries, 10) >= 0.9


@pytest.mark.parametrize("storage, bytes_per_value", [("float16", 2), ("float32", 4), ("8bit", 1)])
def test_hnsw_keeps_the_vectors_in_the_storage_asked_for_at_the_same_recall(tmp_path, storage, bytes_per_value):
    vectors = clustered(2000)
    backend = backends.FaissBackend.build("hnsw", vectors, backends.BackendConfig(hnsw_storage=storage))
    backend.save(str(tmp_path / "b.bin"))
    loaded = backends.load_backend("hnsw", str(tmp_path / "b.bin"))
    assert type(loaded.index).__name__ == ("IndexHNSWFlat" if storage == "float32" else "IndexHNSWSQ")
    assert loaded.index.storage.sa_code_size() == 32 * bytes_per_value  # bytes kept per 32-d vector
    assert backends.recall_at(loaded, backends.ExactBackend(vectors), vectors[:50], 10) >= 0.9
    scores, rows = loaded.search(vectors[:5], 3)
    np.testing.assert_allclose(scores, np.sum(vectors[rows] * vectors[:5, None], axis=-1), atol=0.02)


def test_an_unknown_hnsw_storage_is_refused_by_name():
    with pytest.raises(InvalidArgumentError, match="hnsw_storage 'int4'"):
        backends.FaissBackend.build("hnsw", clustered(100), backends.BackendConfig(hnsw_storage="int4"))

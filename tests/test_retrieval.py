"""Recall@K, ranks and pair accuracy on a hand-checked 4-image x 8-caption case; index; cache."""

import os

import numpy as np
import pytest

from dual_encoder.evaluation import retrieval

# Similarity of 8 captions (rows) to 4 images (columns); captions 2i and 2i+1 belong to image i.
SIM = np.array(
    [
        [0.90, 0.10, 0.20, 0.15],  # img0: own 0.90 is best            -> t2i rank 1
        [0.30, 0.50, 0.40, 0.10],  # img0: 0.50, 0.40 beat 0.30        -> rank 3
        [0.20, 0.80, 0.10, 0.15],  # img1                              -> rank 1
        [0.60, 0.70, 0.20, 0.15],  # img1                              -> rank 1
        [0.10, 0.20, 0.30, 0.40],  # img2: 0.40 beats                  -> rank 2
        [0.50, 0.60, 0.10, 0.70],  # img2: three beat                  -> rank 4
        [0.00, 0.30, 0.20, 0.10],  # img3: 0.30, 0.20 beat             -> rank 3
        [0.85, 0.95, 0.70, 0.05],  # img3: three beat                  -> rank 4
    ],
    dtype=np.float32,
)
OWNER = np.array([0, 0, 1, 1, 2, 2, 3, 3])
# Identity image embeddings make text_emb @ image_emb.T == SIM.
IMAGES, TEXTS = np.eye(4, dtype=np.float32), SIM


def test_text_to_image_ranks_by_hand():
    ranks = retrieval.text_to_image_ranks(IMAGES, TEXTS, OWNER)
    np.testing.assert_array_equal(ranks, [1, 3, 1, 1, 2, 4, 3, 4])


def test_image_to_text_uses_best_of_its_captions():
    # Columns read as image -> caption scores. img0: best own 0.90 (caption 1 alone would rank
    # 4th), nothing else above -> 1. img1: own 0.80, caption 7 has 0.95 -> 2. img2: own 0.30,
    # beaten by 0.40 and 0.70 -> 3. img3: own 0.10, beaten by five captions -> 6.
    ranks = retrieval.image_to_text_ranks(IMAGES, TEXTS, OWNER)
    np.testing.assert_array_equal(ranks, [1, 2, 3, 6])


def test_report_recall_and_pair_accuracy_by_hand():
    report = retrieval.retrieval_report(IMAGES, TEXTS, OWNER)
    assert report["num_images"] == 4 and report["num_captions"] == 8
    assert report["text_to_image"] == pytest.approx(
        {"R@1": 3 / 8, "R@5": 1.0, "R@10": 1.0, "mean_rank": 19 / 8, "median_rank": 2.5}
    )
    assert report["image_to_text"] == pytest.approx(
        {"R@1": 1 / 4, "R@5": 3 / 4, "R@10": 1.0, "mean_rank": 3.0, "median_rank": 2.5}
    )
    # First captions 0, 2, 4, 6 have ranks 1, 1, 2, 3.
    assert report["top1_pair_accuracy"] == pytest.approx(0.5)
    assert report["top100_pair_accuracy"] == pytest.approx(1.0)


def test_chunked_ranks_match_unchunked(monkeypatch):
    rng = np.random.default_rng(0)
    images = retrieval.l2_normalize(rng.normal(size=(7, 5)))
    texts = retrieval.l2_normalize(rng.normal(size=(13, 5)))
    owner = np.arange(13) % 7
    full = retrieval.retrieval_report(images, texts, owner)
    monkeypatch.setattr(retrieval, "_CHUNK_ROWS", 2)
    assert retrieval.retrieval_report(images, texts, owner) == full


def test_image_without_caption_is_an_error():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval.image_to_text_ranks(np.eye(3), np.eye(3)[:2], np.array([0, 1]))


def test_flatten_captions():
    texts, owner = retrieval.flatten_captions([["a", "b"], ["c"]])
    assert texts == ["a", "b", "c"] and owner.tolist() == [0, 0, 1]


def test_index_search_matches_brute_force_across_chunks():
    rng = np.random.default_rng(1)
    stored = retrieval.l2_normalize(rng.normal(size=(1000, 16)))
    queries = retrieval.l2_normalize(rng.normal(size=(5, 16)))
    scores, index = retrieval.EmbeddingIndex(stored, chunk=128).search(queries, k=10)
    expected = np.argsort(-(queries @ stored.T), axis=1)[:, :10]
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ stored.T, expected, 1), rtol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)
    # best rows at the very end of the last chunk, and k larger than the whole index
    stored[-3:] = queries[:3]
    _, index = retrieval.EmbeddingIndex(stored, chunk=128).search(queries[:3], k=1)
    assert index[:, 0].tolist() == [997, 998, 999]
    scores, index = retrieval.EmbeddingIndex(stored[:5]).search(queries, k=10)
    assert scores.shape == (5, 5) and sorted(index[0].tolist()) == [0, 1, 2, 3, 4]


def test_cache_roundtrip_and_file_change_invalidates(tmp_path):
    item = tmp_path / "a.jpg"
    item.write_bytes(b"x")
    key = retrieval.file_key(item)
    cache = retrieval.EmbeddingCache(tmp_path / "cache", "model-A")
    cache.put([key, retrieval.text_key("hi")], np.ones((2, 3)))
    cache.save()
    reloaded = retrieval.EmbeddingCache(tmp_path / "cache", "model-A")
    assert key in reloaded and len(reloaded) == 2
    assert len(retrieval.EmbeddingCache(tmp_path / "cache", "model-B")) == 0
    item.write_bytes(b"changed")
    os.utime(item, ns=(1, 1))
    assert retrieval.file_key(item) not in reloaded


def test_a_corrupt_cache_file_is_rebuilt_with_a_warning(tmp_path, caplog):
    cache = retrieval.EmbeddingCache(tmp_path, "model-A")
    cache.put(["k"], np.ones((1, 3)))
    cache.save()
    with open(cache.path, "r+b") as f:  # a run killed while copying the file, a full disk
        f.truncate(40)
    with caplog.at_level("WARNING"):
        broken = retrieval.EmbeddingCache(tmp_path, "model-A")
    assert len(broken) == 0 and "is unreadable" in caplog.text and str(cache.path) in caplog.text
    broken.put(["k"], np.full((1, 3), 2.0))
    broken.save()
    np.testing.assert_array_equal(retrieval.EmbeddingCache(tmp_path, "model-A").get("k"), [2.0, 2.0, 2.0])
    assert [p.name for p in tmp_path.iterdir()] == [cache.path.name]  # no temp files left


def test_encode_cached_computes_only_missing_and_drops_failures(tmp_path):
    cache = retrieval.EmbeddingCache(tmp_path, "m")
    cache.put(["k0"], np.full((1, 2), 7.0))
    calls = []

    def encode_missing(indices):
        calls.append(list(indices))
        ok = np.array([i != 2 for i in indices])  # item 2 is "unreadable"
        return np.array([[float(i), 0.0] for i in indices if i != 2]), ok

    vectors, kept = retrieval.encode_cached(["k0", "k1", "k2", "k3"], encode_missing, cache)
    assert calls == [[1, 2, 3]]
    assert kept.tolist() == [True, True, False, True]
    np.testing.assert_array_equal(vectors[:, 0], [7.0, 1.0, 3.0])
    vectors, kept = retrieval.encode_cached(["k1", "k3"], encode_missing, cache)
    assert calls == [[1, 2, 3]] and kept.all()  # second time all from the cache


def test_index_search_names_a_wrong_top_k_or_query():
    """A string or float top_k, or queries of another width, used to fail deep inside numpy."""
    index = retrieval.EmbeddingIndex(IMAGES, keys=list("abcd"))
    for k in ("5", 2.0, None, True):
        with pytest.raises(TypeError, match="top_k must be an integer"):
            index.search(IMAGES[:1], k)
    with pytest.raises(ValueError, match="top_k must be at least 1, got 0"):
        index.search(IMAGES[:1], 0)
    assert index.search(IMAGES[:1], np.int64(1))[1].tolist() == [[0]]  # numpy integers are integers
    for queries in (None, "a dog", [["x", "y", "z", "w"]]):
        with pytest.raises(TypeError, match=r"queries must be embeddings \(an array \[Q, D\]"):
            index.search(queries, 2)
    with pytest.raises(ValueError, match=r"this index holds 4-dimensional embeddings: pass \[Q, 4\]"):
        index.search(np.ones((1, 3), np.float32), 2)
    scores, rows = index.search(IMAGES[2], 1)  # one query as a vector is fine
    assert rows.tolist() == [[2]] and scores.shape == (1, 1)

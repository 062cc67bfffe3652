"""Linear probe: k-shot sampling, a fixed held-out test set, learning separable features."""

import numpy as np
import pytest

from dual_encoder.evaluation import probe
from dual_encoder.evaluation.retrieval import l2_normalize


def _clusters(per_class=20, classes=4, dim=16, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return l2_normalize(centres[labels] + noise * rng.normal(size=(len(labels), dim))), labels


def test_parse_shots():
    assert probe.parse_shots(["1", "4", "16", "all"]) == [1, 4, 16, "all"]
    with pytest.raises(ValueError, match="positive integers or 'all'"):
        probe.parse_shots(["0"])


def test_split_keeps_each_class_on_both_sides_and_singletons_in_test():
    labels = np.array([0] * 6 + [1] * 3 + [2])
    pool, test = probe.split_pool_test(labels, 0.5, np.random.default_rng(0))
    assert sorted(np.concatenate([pool, test]).tolist()) == list(range(10))
    assert np.bincount(labels[test], minlength=3).tolist() == [3, 2, 1]  # round(1.5) = 2
    assert np.bincount(labels[pool], minlength=3).tolist() == [3, 1, 0]


def test_kshot_sampling_takes_k_per_class_from_the_pool():
    labels = np.repeat([0, 1, 2], 10)
    pool = np.arange(0, 30, 2)  # 5 per class
    rng = np.random.default_rng(0)
    picked = probe.kshot_indices(labels, pool, 4, rng)
    assert np.bincount(labels[picked]).tolist() == [4, 4, 4] and set(picked) <= set(pool)
    assert np.bincount(labels[probe.kshot_indices(labels, pool, 16, rng)]).tolist() == [5, 5, 5]
    assert probe.kshot_indices(labels, pool, "all", rng) is pool


def test_probe_learns_separable_features():
    features, labels = _clusters()
    model = probe.LinearProbe(4).fit(features, labels)
    assert (model.scores(features).argmax(1) == labels).mean() == 1.0


def test_run_linear_probe_report():
    features, labels = _clusters(noise=1.0)
    names = ["a", "b", "c", "d"]
    perfect = np.eye(4)[labels]
    result = probe.run_linear_probe(features, labels, names, shots=[1, "all"], zero_shot_scores=perfect)
    assert result["num_test"] == 40
    assert set(result["results"]) == {"zero-shot", "1", "all"}
    assert result["results"]["zero-shot"]["accuracy"] == 1.0  # same test images as the probe
    assert result["results"]["1"]["num_train"] == 4 and result["results"]["all"]["num_train"] == 40
    assert result["results"]["all"]["accuracy"] > 0.6  # chance is 0.25
    assert result["results"]["all"]["accuracy"] >= result["results"]["1"]["accuracy"]

"""Linear-probe baseline on frozen image features, with k-shot sampling.

The zero-shot number only means something next to a supervised baseline on the same features:
a softmax regression trained on k labelled images per class (CLIP's few-shot comparison).
Plain numpy full-batch Adam: a few hundred steps on a few thousand features take well under a
second, and there is no model code to depend on.

Train and test images come from one labelled set: per class, a fixed `test_fraction` is held
out for testing (the same test images for every k), the rest is the pool k-shot samples are
drawn from. A class with a single image goes to the test side, so the probe can miss it; that is
reported, not hidden.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import numpy as np

from dual_encoder.errors import InvalidArgumentError
from dual_encoder.evaluation.metrics import classification_report

Shots = Union[int, str]  # an int k, or "all"
DEFAULT_SHOTS: tuple[Shots, ...] = (1, 4, 16, "all")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    steps: int = 300
    learning_rate: float = 0.05
    l2: float = 1e-4
    test_fraction: float = 0.5
    seed: int = 0


def parse_shots(values: Sequence[str]) -> list[Shots]:
    """'1', '4', 'all' -> [1, 4, 'all'] (for the CLI)."""
    shots: list[Shots] = []
    for value in values:
        if str(value).lower() == "all":
            shots.append("all")
        elif str(value).isdigit() and int(value) > 0:
            shots.append(int(value))
        else:
            raise InvalidArgumentError(f"k-shot values are positive integers or 'all', got {value!r}")
    return shots


def split_pool_test(labels: np.ndarray, test_fraction: float, rng: np.random.Generator):
    """Per-class split into (training pool indices, test indices)."""
    pool, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = max(1, int(round(len(members) * test_fraction)))
        test.extend(members[:n_test])
        pool.extend(members[n_test:])
    return np.sort(np.asarray(pool, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


def kshot_indices(labels: np.ndarray, pool: np.ndarray, shots: Shots, rng) -> np.ndarray:
    """Up to k pool indices per class (all of the pool for 'all')."""
    if shots == "all":
        return pool
    picked = []
    for cls in np.unique(labels[pool]):
        members = pool[labels[pool] == cls]
        picked.extend(rng.choice(members, size=min(shots, len(members)), replace=False))
    return np.sort(np.asarray(picked, dtype=np.int64))


class LinearProbe:
    """Multinomial logistic regression (L2-regularised) trained with full-batch Adam."""

    def __init__(self, num_classes: int, config: ProbeConfig = ProbeConfig()):
        self.num_classes = num_classes
        self.config = config

    def _standardize(self, features: np.ndarray) -> np.ndarray:
        # Unit-norm features have per-dimension scale ~1/sqrt(D): rescale to ~1 so one learning
        # rate fits any embedding size.
        return (features - self.mean) * np.sqrt(features.shape[1])

    def fit(self, features: np.ndarray, labels: np.ndarray) -> "LinearProbe":
        features = np.asarray(features, dtype=np.float64)
        self.mean = features.mean(axis=0)
        x = self._standardize(features)
        onehot = np.eye(self.num_classes)[labels]
        params = [np.zeros((x.shape[1], self.num_classes)), np.zeros(self.num_classes)]
        moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
        cfg, (beta1, beta2) = self.config, (0.9, 0.999)
        for step in range(1, cfg.steps + 1):
            probs = _softmax(x @ params[0] + params[1])
            error = (probs - onehot) / len(x)
            grads = [x.T @ error + cfg.l2 * params[0], error.sum(axis=0)]
            for p, g, m in zip(params, grads, moments):
                m[0] = beta1 * m[0] + (1 - beta1) * g
                m[1] = beta2 * m[1] + (1 - beta2) * g * g
                m_hat, v_hat = m[0] / (1 - beta1**step), m[1] / (1 - beta2**step)
                p -= cfg.learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)
        self.weights, self.bias = params
        return self

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self._standardize(np.asarray(features, dtype=np.float64)) @ self.weights + self.bias


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


SUMMARY_KEYS = ("accuracy", "top5_accuracy", "macro_f1", "mean_per_class_recall")


def run_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    shots: Sequence[Shots] = DEFAULT_SHOTS,
    config: ProbeConfig = ProbeConfig(),
    zero_shot_scores: Optional[np.ndarray] = None,
) -> dict:
    """The `linear_probe` section of report.json: per k, test metrics and the training size.

    With `zero_shot_scores` ([N, C]) the zero-shot result on the very same test images is
    added, so the two can be compared like for like.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(config.seed)
    pool, test = split_pool_test(labels, config.test_fraction, rng)
    results = {}
    if zero_shot_scores is not None:
        results["zero-shot"] = _summary(labels[test], zero_shot_scores[test], class_names)
    for k in shots:
        train = kshot_indices(labels, pool, k, rng)
        if len(train) == 0:
            results[str(k)] = {"error": "no training images left after holding out the test set"}
            continue
        probe = LinearProbe(len(class_names), config).fit(features[train], labels[train])
        results[str(k)] = _summary(labels[test], probe.scores(features[test]), class_names) | {
            "num_train": int(len(train)),
            "classes_without_training_images": int(len(class_names) - len(np.unique(labels[train]))),
        }
    return {
        "config": dataclasses.asdict(config),
        "num_test": int(len(test)),
        "results": results,
    }


def _summary(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> dict:
    report = classification_report(labels, scores.argmax(1), class_names, scores)
    return {key: report[key] for key in SUMMARY_KEYS}

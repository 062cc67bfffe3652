"""Classification metrics for zero-shot and linear-probe results.

Plain numpy, so the numbers can be checked by hand on tiny cases and stay independent of the
model code. Every result is JSON-ready (python floats and lists).

Two recalls are reported because they differ on unbalanced or partial evaluation sets:
`macro_recall` averages over *all* classes (a class with no test images counts as 0, like
scikit-learn's `zero_division=0`), `mean_per_class_recall` averages only over classes that have
test images (the "balanced accuracy" CLIP reports for unbalanced sets).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def top_k_accuracy(y_true, scores, k: int) -> float:
    """Fraction of rows whose true class is among the k highest scores (k capped at #classes)."""
    scores = np.asarray(scores)
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return 0.0
    k = min(k, scores.shape[1])
    true_scores = scores[np.arange(len(y_true)), y_true]
    # Rank = how many classes score strictly higher; ties count in the model's favour.
    higher = (scores > true_scores[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_report(
    y_true,
    y_pred,
    class_names: Sequence[str],
    scores: Optional[np.ndarray] = None,
) -> dict:
    """All classification keys of report.json for one set of predictions.

    `scores` ([N, C], higher is better) is needed for top-5 accuracy; without it top-5 is None.
    `per_class_recall` maps class name -> recall, None for classes without test images.
    """
    num_classes = len(class_names)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    per_class = per_class_scores(matrix)
    present = per_class["support"] > 0
    accuracy = float(np.mean(y_true == y_pred)) if len(y_true) else 0.0
    return {
        "num_examples": int(len(y_true)),
        "accuracy": accuracy,
        "top5_accuracy": None if scores is None else top_k_accuracy(y_true, scores, 5),
        "macro_precision": float(per_class["precision"].mean()),
        "macro_recall": float(per_class["recall"].mean()),
        "macro_f1": float(per_class["f1"].mean()),
        "mean_per_class_recall": float(per_class["recall"][present].mean()) if present.any() else 0.0,
        "per_class_recall": {
            name: (float(r) if has else None)
            for name, r, has in zip(class_names, per_class["recall"], present)
        },
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
    }

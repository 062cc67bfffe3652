"""Classification metrics, checked by hand on a 3-class example."""

import numpy as np
import pytest

from dual_encoder.evaluation import metrics

# Hand-built 3-class case. Rows are true classes, columns predictions:
#   true 0: 3 right, 1 -> class 1         [3, 1, 0]
#   true 1: 2 right, 1 -> class 2         [0, 2, 1]
#   true 2: 1 right, 2 -> class 0         [2, 0, 1]
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 1, 2, 0, 0, 2]
NAMES = ["cat", "dog", "cow"]


def test_confusion_matrix_rows_are_true_classes():
    matrix = metrics.confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(matrix, [[3, 1, 0], [0, 2, 1], [2, 0, 1]])


def test_precision_recall_f1_by_hand():
    scores = metrics.per_class_scores(metrics.confusion_matrix(Y_TRUE, Y_PRED, 3))
    # precision = TP / column sum: 3/5, 2/3, 1/2; recall = TP / row sum: 3/4, 2/3, 1/3
    np.testing.assert_allclose(scores["precision"], [3 / 5, 2 / 3, 1 / 2])
    np.testing.assert_allclose(scores["recall"], [3 / 4, 2 / 3, 1 / 3])
    # F1 = 2PR/(P+R): 2/3, 2/3, 2/5
    np.testing.assert_allclose(scores["f1"], [2 / 3, 2 / 3, 2 / 5])


def test_report_macro_values_by_hand():
    report = metrics.classification_report(Y_TRUE, Y_PRED, NAMES)
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["macro_precision"] == pytest.approx(53 / 90)
    assert report["macro_recall"] == pytest.approx(7 / 12)
    assert report["macro_f1"] == pytest.approx(26 / 45)
    assert report["mean_per_class_recall"] == pytest.approx(7 / 12)
    assert report["per_class_recall"] == pytest.approx({"cat": 0.75, "dog": 2 / 3, "cow": 1 / 3})
    assert report["class_names"] == NAMES
    assert report["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [2, 0, 1]]
    assert report["top5_accuracy"] is None


def test_class_without_test_images_counts_only_in_macro_recall():
    report = metrics.classification_report([0, 1], [0, 0], ["a", "b", "c"])
    assert report["per_class_recall"] == {"a": 1.0, "b": 0.0, "c": None}
    assert report["macro_recall"] == pytest.approx(1 / 3)
    assert report["mean_per_class_recall"] == pytest.approx(1 / 2)


def test_top_k_accuracy():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1]])
    labels = [0, 0, 2]
    assert metrics.top_k_accuracy(labels, scores, 1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(labels, scores, 2) == pytest.approx(2 / 3)  # row 2 ties class 0
    assert metrics.top_k_accuracy(labels, scores, 3) == pytest.approx(1.0)
    assert metrics.top_k_accuracy(labels, scores, 5) == pytest.approx(1.0)  # capped at #classes

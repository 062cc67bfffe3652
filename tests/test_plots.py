"""The report figures are written as real PNGs, also for many classes and long names."""

import numpy as np
from PIL import Image

from dual_encoder.evaluation import plots


def _is_png(path, min_side=100):
    with Image.open(path) as image:
        return image.format == "PNG" and min(image.size) >= min_side


def test_confusion_matrix_png(tmp_path):
    path = plots.save_confusion_matrix([[3, 1], [0, 2]], ["cat", "a very long class name " * 3], tmp_path / "cm.png")
    assert _is_png(path)
    many = np.random.default_rng(0).integers(0, 5, size=(40, 40))  # no per-cell numbers past 30 classes
    assert _is_png(plots.save_confusion_matrix(many, [f"class {i}" for i in range(40)], tmp_path / "big.png"))


def test_similarity_and_search_grid_png(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(3)]
    sim = plots.save_similarity_matrix(rng.random((3, 3)), images, ["a", "b", "c" * 100], tmp_path / "sim.png")
    grid = plots.save_search_grid(images, [0.9, 0.5, 0.1], ["x.jpg", "y.jpg", "z.jpg"], tmp_path / "g.png", "dogs")
    assert _is_png(sim) and _is_png(grid)


def test_training_curves_png(tmp_path):
    history = {"loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.7, 1.6], "accuracy": [0.2, 0.4, 0.5], "learning_rate": [1e-3] * 3}
    assert _is_png(plots.save_training_curves(history, tmp_path / "curves.png"))
    assert _is_png(plots.save_training_curves({}, tmp_path / "empty.png"), min_side=1)  # no history yet: still a file

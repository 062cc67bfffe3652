"""PNG figures for reports: confusion matrix, image x caption similarity, search results grid.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, never through
pyplot, so no global backend is switched and nothing opens a window (safe on headless machines
and inside notebooks that use another backend).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_MAX_ANNOTATED_CLASSES = 30  # beyond this, cell numbers are unreadable: colours only


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def save_confusion_matrix(matrix, class_names: Sequence[str], path, title: str = "Confusion matrix"):
    """Cells coloured by row-normalised recall and labelled with counts (rows = true class)."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    recall = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.45 * n + 2.5)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    image = ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), [_short(c, 20) for c in class_names], rotation=60, ha="right")
    ax.set_yticks(range(n), [_short(c, 20) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= _MAX_ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if recall[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    return _save(fig, path)


def save_similarity_matrix(similarity, images: Sequence[np.ndarray], captions: Sequence[str], path):
    """CLIP-notebook style: captions as rows, image thumbnails above their columns."""
    similarity = np.asarray(similarity)
    rows, cols = similarity.shape
    fig = Figure(figsize=(2 + 1.3 * cols, 1.5 + 0.6 * rows))
    ax = fig.add_subplot()
    ax.imshow(similarity, cmap="viridis", aspect="auto")
    middle = (similarity.min() + similarity.max()) / 2
    for (i, j), value in np.ndenumerate(similarity):
        colour = "black" if value > middle else "white"  # readable on viridis' bright end
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9, color=colour)
    for j, image in enumerate(images):
        ax.imshow(image, extent=(j - 0.45, j + 0.45, -1.6, -0.6), origin="upper")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -1.7)
    ax.set_yticks(range(rows), [_short(c, 60) for c in captions], fontsize=9)
    ax.set_xticks([])
    ax.set_title("Cosine similarity: captions (rows) x images (columns)")
    return _save(fig, path)


def save_search_grid(
    images: Sequence[np.ndarray],
    scores: Sequence[float],
    labels: Sequence[str],
    path,
    query: Optional[str] = None,
):
    """The best matches in reading order, each titled with its score and name."""
    count = max(len(images), 1)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(3 * cols, 3.3 * rows + 0.4))
    for position, (image, score, label) in enumerate(zip(images, scores, labels)):
        ax = fig.add_subplot(rows, cols, position + 1)
        ax.imshow(image)
        ax.set_title(f"{position + 1}. {score:.3f}\n{_short(label, 32)}", fontsize=9)
        ax.axis("off")
    if query:
        fig.suptitle(_short(f"“{query}”", 100), fontsize=12)
    return _save(fig, path)


def save_training_curves(history: dict[str, Sequence[float]], path, title: str = "Training curves"):
    """One panel per metric (loss, accuracy, logit scale, ...), training and `val_` side by side."""
    names = sorted({key.removeprefix("val_") for key in history}, key=lambda n: (n != "loss", n))
    cols = min(3, max(len(names), 1))
    rows = math.ceil(max(len(names), 1) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows))
    for position, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, position + 1)
        for key, style in ((name, "-o"), (f"val_{name}", "--s")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)

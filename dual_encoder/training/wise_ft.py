"""WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): the weight-space mix
(1 - alpha) * pretrained + alpha * fine-tuned, against the forgetting of fine-tuning.

Fine-tuning a CLIP on a narrow domain costs it much of its zero-shot ability elsewhere; mixing
the weights of the checkpoint and of the fine-tuned model keeps most of both, because the two
lie in one basin. `apply_mix` makes a model the mix (alpha 1: the fine-tuned model, 0: the
checkpoint exactly); `sweep` measures a run's mix at several alphas on the user's validation
shards and on a reference zero-shot set, the trade-off `evaluate.py wise-ft` tabulates and plots.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence

import keras
import numpy as np

from dual_encoder.data.pipeline import resize_image
from dual_encoder.errors import InvalidArgumentError, PathNotFoundError
from dual_encoder.evaluation.embedders import BatchedEmbedder, ImagePrep


def weights_of(model: keras.Model) -> list:
    """A copy of every weight of the model (towers, heads, temperature, bias), in `model.weights` order."""
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def mix(pretrained: Sequence[np.ndarray], finetuned: Sequence[np.ndarray], alpha: float) -> list:
    """(1 - alpha) * pretrained + alpha * fine-tuned for float weights (integer state, such as
    random-generator seeds, is the fine-tuned model's); alpha 0 and 1 return the ends exactly."""
    mixed = []
    for start, end in zip(pretrained, finetuned, strict=True):
        if alpha == 0.0 or alpha == 1.0 or not np.issubdtype(end.dtype, np.floating):
            mixed.append((start if alpha == 0.0 and np.issubdtype(end.dtype, np.floating) else end).copy())
        else:
            mixed.append(((1.0 - alpha) * start.astype(np.float64) + alpha * end.astype(np.float64)).astype(end.dtype))
    return mixed


def apply_mix(model: keras.Model, pretrained: Sequence[np.ndarray], finetuned: Sequence[np.ndarray], alpha: float) -> int:
    """Assigns the mix to the model's weights; returns how many weights differ between the ends."""
    for variable, value in zip(model.weights, mix(pretrained, finetuned, alpha), strict=True):
        variable.assign(value)
    return sum(not np.array_equal(a, b) for a, b in zip(pretrained, finetuned))


# --- a run's trade-off curve -------------------------------------------------------------------

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
DOMAIN_METRIC = ("text_to_image", "R@5")  # plotted; every Recall@K both ways is in the table
REFERENCE_METRIC = "accuracy"


class ModelEmbedder(BatchedEmbedder):
    """A DualEncoder in memory behind evaluation's Embedder interface (images prepared as
    training resizes them), so a sweep measures each mix without exporting it."""

    def __init__(self, model, description: dict, batch_size: int = 32, progress: bool = True):
        import tensorflow as tf

        super().__init__(ImagePrep(int(max(model.image_size)), model.resize), batch_size, progress)
        self.description = description
        self._images = tf.function(lambda images: model.embed_images(
            {"images": resize_image(images, model.image_size, model.resize)}),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        self._texts = tf.function(model.encode_texts, input_signature=[tf.TensorSpec([None], tf.string)])

    def _embed_image_batch(self, batch):
        import tensorflow as tf

        return self._images(tf.constant(batch, tf.uint8)).numpy()

    def _embed_text_batch(self, texts):
        import tensorflow as tf

        return self._texts(tf.constant(texts, tf.string)).numpy()

    def describe(self) -> dict:
        return {**self.description, "preprocessing": self.prep.describe()}


def load_run(run_dir) -> tuple:
    """(model, pretrained weights, fine-tuned weights, results.json) of a run trained with --init:
    the checkpoint rebuilt from the preset the run names, the fine-tuned weights from its model.keras."""
    from dual_encoder.config import RunConfig
    from dual_encoder.training.trainer import build_model, build_towers

    run_dir = Path(run_dir)
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError) as error:
        raise PathNotFoundError(f"--run {run_dir}: no readable results.json ({error}); pass a run folder train.py "
                                "finished") from None
    config = RunConfig.from_dict(results["config"])
    if not config.finetune.init:
        raise InvalidArgumentError(f"--run {run_dir} was not trained from a checkpoint (--init): WiSE-FT mixes the "
                                   "fine-tuned weights with the ones the run started from")
    image, text, _ = build_towers(config, [])
    model = build_model(config, image, text)
    pretrained = weights_of(model)
    model.load_weights(str(run_dir / "model.keras"))
    return model, pretrained, weights_of(model), results


def _row(alpha: float, domain: Optional[dict], reference: Optional[dict]) -> dict:
    row = {"alpha": alpha}
    if domain is not None:
        row["domain"] = {direction: {k: domain[direction][k] for k in ("R@1", "R@5", "R@10")}
                         for direction in ("text_to_image", "image_to_text")}
    if reference is not None:
        row["reference"] = {k: reference[k] for k in (REFERENCE_METRIC, "mean_per_class_recall", "macro_f1")}
    return row


def sweep(run_dir, alphas: Sequence[float] = DEFAULT_ALPHAS, domain: Optional[tuple] = None,
          reference: Optional[tuple] = None, batch_size: int = 32, progress: bool = True) -> dict:
    """The run's WiSE-FT mix at each alpha, measured on `domain` = (records, source info), e.g.
    `evaluation.shard_records(dirs, "val")` (retrieval Recall@K), and on `reference` = (labelled
    images, templates, dataset name) (zero-shot accuracy): the table `evaluate.py wise-ft` writes."""
    from dual_encoder.evaluation import runs

    alphas = [check_alpha(a) for a in alphas]
    if domain is None and reference is None:
        raise InvalidArgumentError("nothing to measure the mix on: give validation shards and/or a reference dataset")
    model, pretrained, finetuned, results = load_run(run_dir)
    embedder = ModelEmbedder(model, {"type": "wise-ft", "run": str(Path(run_dir).resolve())}, batch_size, progress)
    rows = []
    for alpha in alphas:  # one embedder: its traced functions read the variables each mix assigns
        apply_mix(model, pretrained, finetuned, alpha)
        embedder.description["alpha"] = alpha
        measured = runs.retrieval_run(embedder, *domain)[0] if domain is not None else None
        classified = runs.zero_shot(embedder, reference[0], reference[1], reference[2]) if reference is not None else None
        rows.append(_row(alpha, measured, classified))
    return {"run": str(run_dir), "init": results["config"]["finetune"]["init"], "rows": rows,
            "domain": None if domain is None else domain[1], "reference": None if reference is None else {
                "dataset": reference[2], "templates": reference[1], "data": reference[0].info},
            "domain_metric": " ".join(DOMAIN_METRIC), "reference_metric": REFERENCE_METRIC}


def check_alpha(alpha) -> float:
    from dual_encoder.config import FinetuneConfig, bounds_of

    return dataclasses.replace(bounds_of(FinetuneConfig, "wise_ft"), optional=False).check(alpha, "--alphas")


def table(report: dict) -> str:
    """The trade-off as text, one row per alpha."""
    head = "alpha" + ("   t2i R@1 / R@5   i2t R@1 / R@5" if report["domain"] else "") + (
        "   reference accuracy / mean per-class recall" if report["reference"] else "")
    lines = [head]
    for row in report["rows"]:
        line = f"{row['alpha']:5.2f}"
        if "domain" in row:
            t2i, i2t = row["domain"]["text_to_image"], row["domain"]["image_to_text"]
            line += f"   {t2i['R@1']:6.1%} / {t2i['R@5']:6.1%}   {i2t['R@1']:6.1%} / {i2t['R@5']:6.1%}"
        if "reference" in row:
            line += f"   {row['reference']['accuracy']:6.1%} / {row['reference']['mean_per_class_recall']:6.1%}"
        lines.append(line)
    return "\n".join(lines)


def save_plot(report: dict, path) -> Path:
    """Domain metric against reference metric, one point per alpha (or either against alpha)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, path = report["rows"], Path(path)
    alphas = [row["alpha"] for row in rows]
    domain = [row["domain"][DOMAIN_METRIC[0]][DOMAIN_METRIC[1]] for row in rows] if report["domain"] else None
    reference = [row["reference"][REFERENCE_METRIC] for row in rows] if report["reference"] else None
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    x, y = (reference, domain) if domain and reference else (alphas, domain or reference)
    ax.plot(x, y, "o-")
    for alpha, xi, yi in zip(alphas, x, y):
        ax.annotate(f"α={alpha:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    domain_label = f"validation {DOMAIN_METRIC[0].replace('_', '→')} {DOMAIN_METRIC[1]}"
    reference_label = f"reference zero-shot {REFERENCE_METRIC}"
    ax.set_xlabel(reference_label if domain and reference else "alpha (0: pretrained, 1: fine-tuned)")
    ax.set_ylabel(domain_label if domain else reference_label)
    ax.set_title("WiSE-FT: (1 - α) · pretrained + α · fine-tuned")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path

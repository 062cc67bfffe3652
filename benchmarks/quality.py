#!/usr/bin/env python
"""Real quality offline: the `lit-small` preset on the real photos and towers in ../shared.

  python benchmarks/quality.py --shared ../shared --out benchmarks/results/quality.json
  python benchmarks/quality.py --suite flickr8k       # `lit` on Flickr8k, 1,000 held-out photos, 3 seeds

1. Writes TFRecord shards exactly as `python -m dual_encoder.data` does: coco_mini train2017
   (80 photos, 5 captions each) and fashion_small (1,327 products, `productDisplayName` as the
   caption), each with 20 % of the images held out by image as the validation split.
2. Trains `lit-small` (EfficientNet-Lite0 + all-MiniLM-L6-v2, both frozen, linear heads, the
   ConSE class prior) once per seed through `training.train` (tower features are extracted once
   and cached next to the shards); the ablation: the same without the class prior; and the
   floors: the preset after 0 epochs, i.e. randomly initialised heads, on the class prior alone
   and without it (the chance-level floor).
3. Evaluates each run's SavedModel through `dual_encoder.evaluation` on images never trained on:
   - retrieval on coco_mini val2017 (159 photos, 795 captions), text->image and image->text
     R@1/5/10 against chance;
   - zero-shot on animals10_proxy (33 photos, 10 classes): one template ('a photo of a {}.'),
     the dataset's own 5-template ensemble and CLIP's 80 ImageNet templates; accuracy and mean
     per-class recall;
   - zero-shot `articleType` on the held-out fashion split (the val images, labels from
     styles.csv): all classes present there, and the classes with at least 5 images;
   - a linear probe on the same image embeddings (animals, fashion), the supervised baseline.
4. Prints a markdown table (mean ± sample std over seeds) and writes every figure, the prompts,
   the preprocessing, the data manifests and the wall times to --out.

Runs go to --work-dir (deleted and retrained each time, so that a rerun never resumes an old
run); their large files (checkpoints, model.keras, SavedModel) are removed after evaluation
unless --keep-models. Without ../shared it prints why and exits 0.
"""

from __future__ import annotations

import dual_encoder.cli  # noqa: F401  (first: the tools' TensorFlow defaults, before TensorFlow loads)

# isort: split
import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

from dual_encoder import config as run_config
from dual_encoder import files

ROOT = Path(__file__).resolve().parents[1]

PRESET = "lit-small"
SINGLE, ENSEMBLES = "default", ("auto", "imagenet")  # animals: 1 template; its own 5; CLIP's 80
FASHION_MIN_IMAGES = 5  # the second fashion task keeps classes with at least this many held-out images
PROBE_SHOTS = ["all"]
SOURCES = ("coco_train2017", "fashion_small")
ENSEMBLE_REPORTS = tuple(f"animals_{t}" for t in ENSEMBLES)  # same data as animals_default
PER_CLASS = ("animals_default", "fashion_top")  # per-class recall kept for every run
QUALITY_BAR = {"coco_t2i_R@5": 0.25, "animals_default_accuracy": 0.30}  # means over seeds


def shared_layout(shared: Path) -> dict:
    """The paths this benchmark reads; raises FileNotFoundError naming what is missing."""
    paths = {
        "coco": shared / "data" / "coco_mini",
        "coco_val_captions": shared / "data" / "coco_mini" / "annotations" / "captions_val2017_all159.json",
        "fashion_csv": shared / "data" / "fashion_small" / "styles.csv",
        "animals": shared / "data" / "animals10_proxy",
        "image_encoder": shared / "weights" / "efficientnet_lite0_keras",
        "text_encoder": shared / "weights" / "all-minilm-l6-v2",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing: {', '.join(missing)}")
    return paths


def shard_commands(paths: dict) -> dict[str, list[str]]:
    """`python -m dual_encoder.data` arguments per shard folder (the README's commands)."""
    return {
        "coco_train2017": ["--coco-dir", str(paths["coco"]), "--split", "train2017", "--val-fraction", "0.2"],
        "fashion_small": ["--csv", str(paths["fashion_csv"]), "--image-column", "id", "--image-template", "images/{}.jpg",
                          "--caption-column", "productDisplayName", "--val-fraction", "0.2", "--max-side", "400"],
    }  # fmt: skip


def write_data(paths: dict, shards_dir: Path, sources) -> tuple[dict, float]:
    """Writes (or reuses, when complete) the training shards; returns {name: folder} and seconds."""
    from dual_encoder.cli.data import main as write_shards_cli

    started = time.perf_counter()
    folders = {}
    for name, args in shard_commands(paths).items():
        if name not in sources:
            continue
        folders[name] = shards_dir / name
        if write_shards_cli([*args, "--out", str(folders[name]), "--quiet"]) != 0:
            raise RuntimeError(f"writing the {name} shards into {folders[name]} failed (see the error above)")
    return folders, time.perf_counter() - started


def make_config(paths: dict, seed: int, epochs=None, class_prior=None):
    config = run_config.get_preset(PRESET)
    config.model.image_encoder, config.model.text_encoder = str(paths["image_encoder"]), str(paths["text_encoder"])
    config.train.seed = seed
    if epochs is not None:
        set_epochs(config, epochs)
    if class_prior is not None:
        config.model.class_prior = class_prior
    return config


def report(out: Path, output: dict, table: str, bar: dict) -> None:
    """Writes the results JSON (paths relative to the repository or ../shared), prints the table and the bar."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(files.portable_paths(json.loads(json.dumps(output, default=str))), indent=2))
    print("\n" + table + "\n")
    for key, check in bar.items():
        print(f"quality bar {key}: {100 * check['mean']:.1f} % (needs ≥ {100 * check['required']:.0f} %) "
              f"{'met' if check['met'] else 'NOT met'}")  # fmt: skip


def set_epochs(config, epochs: int) -> None:
    """`epochs` epochs; 0 means the heads as initialised: one epoch at learning rate 0 (train.py
    needs at least one epoch; AdamW at rate 0 moves no weight, decay included), then the export."""
    if epochs == 0:
        config.train.epochs, config.train.learning_rate = 1, 0.0
    else:
        config.train.epochs = epochs


def train_run(config, shard_dirs, run_dir: Path) -> dict:
    from dual_encoder import training

    if run_dir.exists():  # a leftover backup would make train() resume instead of starting again
        shutil.rmtree(run_dir)
    return training.train(config, [str(d) for d in shard_dirs], run_dir, verbose=0, export=True)


def load_tasks(paths: dict, fashion_shards) -> dict:
    """The held-out evaluation sets, loaded once (images are read per model); the fashion
    tasks only when fashion is trained on (they use its held-out split)."""
    from dual_encoder import evaluation
    from dual_encoder.data.coco import coco_records
    from dual_encoder.data.records import SkipCounter
    from dual_encoder.evaluation import datasets

    skipped = SkipCounter()
    coco = coco_records(str(paths["coco"]), "val2017", str(paths["coco_val_captions"]), skipped=skipped)
    coco_info = {"type": "coco", "coco_dir": str(paths["coco"]), "split": "val2017",
                 "captions_json": str(paths["coco_val_captions"]), "skipped_by_source": skipped.as_dict()}  # fmt: skip
    tasks = {"coco": (coco, coco_info), "animals": datasets.load_animals10(paths["animals"])}
    if fashion_shards is None:
        return tasks
    held_out = evaluation.shard_image_ids([str(fashion_shards)], "val")
    fashion = datasets.load_csv_classification(paths["fashion_csv"], "id", "articleType", "images/{}.jpg", held_out)
    fashion.info["restricted_to"] = {"shards": [str(fashion_shards)], "split": "val"}
    sizes = fashion.info["images_per_class"]
    big = sum(1 for n in sizes.values() if n >= FASHION_MIN_IMAGES)
    tasks["fashion_all"] = fashion
    tasks["fashion_top"] = datasets.keep_top_classes(fashion, big)  # exactly the classes with >= FASHION_MIN_IMAGES
    return tasks


def evaluate_run(run_dir: Path, tasks: dict, cache_dir: Path) -> tuple[dict, dict]:
    """(flat metrics, details for the JSON) of one run's SavedModel on every held-out task."""
    from dual_encoder import evaluation
    from dual_encoder.evaluation import probe, retrieval
    from dual_encoder.evaluation.embedders import load_embedder

    started = time.perf_counter()
    embedder = load_embedder(str(run_dir), batch_size=32, progress=False)
    cache = retrieval.EmbeddingCache(str(cache_dir), embedder.fingerprint())  # images embedded once per model
    metrics, details = {}, {}
    coco_report, _ = evaluation.retrieval_run(embedder, *tasks["coco"], cache)
    for direction, short in (("text_to_image", "t2i"), ("image_to_text", "i2t")):
        for k in (1, 5, 10):
            metrics[f"coco_{short}_R@{k}"] = coco_report[direction][f"R@{k}"]
    details["coco"] = coco_report
    shots = probe.parse_shots(PROBE_SHOTS)
    for templates in (SINGLE, *ENSEMBLES):
        report = evaluation.zero_shot(embedder, tasks["animals"], templates, "animals10", cache,
                                      shots if templates == SINGLE else None)  # fmt: skip
        _classification(metrics, f"animals_{templates}", report)
        details[f"animals_{templates}"] = report
    for name in [t for t in ("fashion_all", "fashion_top") if t in tasks]:
        report = evaluation.zero_shot(embedder, tasks[name], SINGLE, "csv", cache, shots)
        _classification(metrics, name, report)
        details[name] = report
    metrics["eval_seconds"] = time.perf_counter() - started
    return metrics, details


def _classification(metrics: dict, prefix: str, report: dict) -> None:
    metrics[f"{prefix}_accuracy"] = report["accuracy"]
    metrics[f"{prefix}_mean_per_class_recall"] = report["mean_per_class_recall"]
    probe_results = report.get("linear_probe", {}).get("results", {})
    if probe_results:  # the probe's test half: the probe and zero-shot on the very same images
        metrics[f"{prefix}_probe_accuracy"] = probe_results["all"]["accuracy"]
        metrics[f"{prefix}_probe_zero_shot_accuracy"] = probe_results["zero-shot"]["accuracy"]


def run_metrics(results: dict) -> dict:
    """Wall times of one training run (seconds)."""
    cache = results["feature_cache"]
    timings = results["timings"]
    out = {"train_total_seconds": timings["total_seconds"], "fit_seconds": timings["fit_seconds"],
           "epochs_run": results["epochs_run"], "export_seconds": timings["export_seconds"]}  # fmt: skip
    if cache.get("files_computed"):
        out["extraction_seconds"] = cache["extraction_seconds"]
        for kind, seconds in cache.get("compute_seconds", {}).items():
            rows = cache.get("computed_rows", {}).get(kind)
            if rows and seconds:
                out[f"extraction_{kind}s_per_second"] = rows / seconds
    return out


def chance(tasks: dict) -> dict:
    """What a random ranking / guess scores on each task."""
    records = tasks["coco"][0]
    images, counts = len(records), [len(r.captions) for r in records]
    captions = sum(counts)
    out = {}
    for k in (1, 5, 10):
        out[f"coco_t2i_R@{k}"] = min(1.0, k / images)
        # an image's c captions among all: P(at least one in a random top k)
        out[f"coco_i2t_R@{k}"] = statistics.fmean(1 - math.comb(captions - c, k) / math.comb(captions, k) for c in counts)
    for name in [t for t in ("animals", "fashion_all", "fashion_top") if t in tasks]:
        for key in ("accuracy", "mean_per_class_recall", "probe_accuracy", "probe_zero_shot_accuracy"):
            out[f"{name}_{key}"] = 1 / len(tasks[name].class_names)
    for templates in (SINGLE, *ENSEMBLES):
        for key in ("accuracy", "mean_per_class_recall", "probe_accuracy", "probe_zero_shot_accuracy"):
            out[f"animals_{templates}_{key}"] = out[f"animals_{key}"]
    return out


def summarise(per_seed: list[dict]) -> dict:
    """{metric: {mean, std (sample, over seeds), values}} over the seeds that have the metric."""
    keys = dict.fromkeys(k for m in per_seed for k in m)
    out = {}
    for key in keys:
        values = [m[key] for m in per_seed if m.get(key) is not None]
        if values:
            out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "values": values}  # fmt: skip
    return out


ROWS = [  # (metric key, label)
    ("coco_t2i_R@1", "coco val2017 text→image R@1"),
    ("coco_t2i_R@5", "coco val2017 text→image R@5"),
    ("coco_t2i_R@10", "coco val2017 text→image R@10"),
    ("coco_i2t_R@1", "coco val2017 image→text R@1"),
    ("coco_i2t_R@5", "coco val2017 image→text R@5"),
    ("coco_i2t_R@10", "coco val2017 image→text R@10"),
    ("animals_default_accuracy", "animals10_proxy zero-shot accuracy, 1 template"),
    ("animals_default_mean_per_class_recall", "animals10_proxy mean per-class recall, 1 template"),
    ("animals_auto_accuracy", "animals10_proxy zero-shot accuracy, 5-template ensemble"),
    ("animals_auto_mean_per_class_recall", "animals10_proxy mean per-class recall, 5-template ensemble"),
    ("animals_imagenet_accuracy", "animals10_proxy zero-shot accuracy, CLIP's 80 templates"),
    ("animals_imagenet_mean_per_class_recall", "animals10_proxy mean per-class recall, CLIP's 80 templates"),
    ("animals_default_probe_zero_shot_accuracy", "animals10_proxy test half: zero-shot accuracy"),
    ("animals_default_probe_accuracy", "animals10_proxy test half: linear probe accuracy (other half)"),
    ("fashion_all_accuracy", "fashion held-out articleType zero-shot accuracy, all classes"),
    ("fashion_all_mean_per_class_recall", "fashion held-out articleType mean per-class recall, all classes"),
    ("fashion_top_accuracy", "fashion held-out articleType zero-shot accuracy, classes ≥5 images"),
    ("fashion_top_mean_per_class_recall", "fashion held-out articleType mean per-class recall, classes ≥5 images"),
    ("fashion_top_probe_zero_shot_accuracy", "fashion classes ≥5 images, test half: zero-shot accuracy"),
    ("fashion_top_probe_accuracy", "fashion classes ≥5 images, test half: linear probe accuracy (other half)"),
]
TIME_ROWS = [
    ("extraction_seconds", "feature extraction, both towers, all shards (s, once)"),
    ("fit_seconds", "head training, fit (s)"),
    ("epochs_run", "epochs run (early stopping)"),
    ("train_total_seconds", "train() total: towers, fit, checkpoints, export (s)"),
    ("eval_seconds", "evaluation of one SavedModel, all tasks (s)"),
]


VARIANT_NAMES = {"trained": f"{PRESET} (trained heads)", "no_prior": f"{PRESET} without the class prior",
                 "untrained": "untrained heads (floor: the class prior alone)",
                 "untrained_no_prior": "untrained heads without the class prior"}


def _cell(stat: dict | None, percent: bool) -> str:
    if not stat:
        return "–"
    scale, digits = (100, 1) if percent else (1, 1)
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def markdown_table(summary: dict, chance_levels: dict, seeds: int) -> str:
    variants = [v for v in VARIANT_NAMES if v in summary]
    names = VARIANT_NAMES
    lines = [f"| metric (%, mean ± std over {seeds} seeds) | " + " | ".join(names[v] for v in variants) + " | chance |",
             "|---|" + "---|" * (len(variants) + 1)]  # fmt: skip
    for key, label in ROWS:
        if any(key in summary[v] for v in variants):
            chance_cell = f"{100 * chance_levels[key]:.1f}" if key in chance_levels else "–"
            lines.append(f"| {label} | " + " | ".join(_cell(summary[v].get(key), True) for v in variants) + f" | {chance_cell} |")
    for key, label in TIME_ROWS:
        if any(key in summary[v] for v in variants):
            lines.append(f"| {label} | " + " | ".join(_cell(summary[v].get(key), False) for v in variants) + " | |")
    return "\n".join(lines)


def remove_large_files(run_dir: Path) -> None:
    for name in ("checkpoints", "backup", "saved_model", "model.keras", "tensorboard"):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# --- the Flickr8k suite: thousands of pairs, the `lit` preset -----------------------------------

FLICKR8K_HELD_OUT, FLICKR8K_SPLIT_SEED = 1000, 0  # photos never trained on, chosen by this seed
FLICKR8K_BAR = {"t2i_R@1": 0.25, "t2i_R@5": 0.52, "t2i_R@10": 0.65}  # means over seeds
BRNN = {"t2i_R@1": 0.118, "t2i_R@5": 0.321, "t2i_R@10": 0.447}  # image search, Flickr8K's 1,000 test photos
# (Karpathy & Fei-Fei 2015, Deep Visual-Semantic Alignments): the historical reference the issue quotes
FLICKR8K_VARIANTS = {  # name: (preset, epochs override, label, every seed or the first only)
    "lit": ("lit", None, "`lit`", True),
    # The baselines take the first seed only: lit-small's towers feed no mid-level features, so its
    # recipe needs an extraction of its own, and 3 seeds of it would push the suite past 25 minutes.
    "lit_small_recipe": ("lit-small", None, "`lit-small`'s recipe", False),
    "untrained": ("lit", 0, "untrained heads (class prior alone)", False),
}
FLICKR8K_ROWS = [(f"{d}_R@{k}", f"{'text→image' if d == 't2i' else 'image→text'} R@{k}") for d in ("t2i", "i2t")
                 for k in (1, 5, 10)] + [("t2i_median_rank", "text→image median rank"),
                                         ("i2t_median_rank", "image→text median rank"),
                                         ("animals_accuracy", "animals10_proxy zero-shot accuracy (1 template)")]
FLICKR8K_TIME_ROWS = [("extraction_seconds", "feature extraction, once (s)"), ("fit_seconds", "head training, fit (s)"),
                      ("epochs_run", "epochs run"), ("train_total_seconds", "train() total (s)"),
                      ("eval_seconds", "evaluation of the SavedModel (s)")]


def flickr8k_layout(shared: Path) -> dict:
    paths = {"captions": shared / "data" / "flickr8k" / "captions.txt", "images": shared / "data" / "flickr8k" / "Images",
             "animals": shared / "data" / "animals10_proxy",
             "image_encoder": shared / "weights" / "efficientnet_lite0_keras",
             "text_encoder": shared / "weights" / "all-minilm-l6-v2"}  # fmt: skip
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing: {', '.join(missing)}")
    return paths


def flickr8k_split(paths: dict, work_dir: Path, held_out: int = FLICKR8K_HELD_OUT) -> dict:
    """Two CSVs (image path, caption) in `work_dir`: `held_out` photos chosen by FLICKR8K_SPLIT_SEED
    (all their captions) and the rest, which train.py splits again into train and val."""
    import csv

    import numpy as np

    with open(paths["captions"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    photos = sorted({row["image"] for row in rows})
    chosen = set(np.random.default_rng(FLICKR8K_SPLIT_SEED).choice(photos, held_out, replace=False).tolist())
    work_dir.mkdir(parents=True, exist_ok=True)
    out = {"held_out": work_dir / "flickr8k-held-out.csv", "trainval": work_dir / "flickr8k-trainval.csv"}
    for name, path in out.items():
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            writer.writerows([str(paths["images"].resolve() / r["image"]), r["caption"]] for r in rows
                             if (r["image"] in chosen) == (name == "held_out"))  # fmt: skip
    return out


def flickr8k_config(paths: dict, variant: str, seed: int, epochs=None):
    preset, preset_epochs, _, _ = FLICKR8K_VARIANTS[variant]
    config = run_config.get_preset(preset)
    config.model.image_encoder, config.model.text_encoder = str(paths["image_encoder"]), str(paths["text_encoder"])
    config.train.seed = seed
    epochs = preset_epochs if preset_epochs is not None else epochs
    if epochs is not None:
        set_epochs(config, epochs)
    return config


def flickr8k_evaluate(run_dir: Path, held_out, animals, cache_dir: Path) -> dict:
    from dual_encoder import evaluation
    from dual_encoder.evaluation import retrieval
    from dual_encoder.evaluation.embedders import load_embedder

    started = time.perf_counter()
    embedder = load_embedder(str(run_dir), batch_size=64, progress=False)
    cache = retrieval.EmbeddingCache(str(cache_dir), embedder.fingerprint())
    report, _ = evaluation.retrieval_run(embedder, *held_out, cache)
    metrics = {f"{short}_{key}": report[direction][key] for direction, short in (("text_to_image", "t2i"),
               ("image_to_text", "i2t")) for key in ("R@1", "R@5", "R@10", "median_rank")}  # fmt: skip
    metrics["animals_accuracy"] = evaluation.zero_shot(embedder, animals, SINGLE, "animals10", cache)["accuracy"]
    metrics["eval_seconds"] = time.perf_counter() - started
    metrics["num_images"], metrics["num_captions"] = report["num_images"], report["num_captions"]
    return metrics


def flickr8k_chance(records) -> dict:
    images, counts = len(records), [len(r.captions) for r in records]
    captions = sum(counts)
    out = {}
    for k in (1, 5, 10):
        out[f"t2i_R@{k}"] = min(1.0, k / images)
        out[f"i2t_R@{k}"] = statistics.fmean(1 - math.comb(captions - c, k) / math.comb(captions, k) for c in counts)
    out["t2i_median_rank"] = (images + 1) / 2
    out["animals_accuracy"] = 0.1
    return out


def _seed_count(stats: dict) -> int:
    return max((len(stat["values"]) for stat in stats.values()), default=0)


def _flickr8k_cell(stat: dict | None, percent: bool) -> str:
    """One seed has no spread to show, so its cell is the value alone."""
    if stat and len(stat["values"]) == 1:
        return f"{(100 if percent else 1) * stat['mean']:.1f}"
    return _cell(stat, percent)


def flickr8k_table(summary: dict, chance_levels: dict) -> str:
    variants = [v for v in FLICKR8K_VARIANTS if v in summary]
    seeds = {v: _seed_count(summary[v]) for v in variants}
    header = " | ".join(f"{FLICKR8K_VARIANTS[v][2]} ({seeds[v]} seed{'s' if seeds[v] != 1 else ''})" for v in variants)
    lines = [f"| held-out Flickr8k, 1,000 photos (%, mean ± std over the seeds) | {header} | BRNN (2015) | chance |",
             "|---|" + "---:|" * (len(variants) + 2)]  # fmt: skip
    for key, label in FLICKR8K_ROWS:
        percent = "rank" not in key
        cells = [_flickr8k_cell(summary[v].get(key), percent) for v in variants]
        brnn = f"{100 * BRNN[key]:.1f}" if key in BRNN else "–"
        level = chance_levels.get(key)
        chance_cell = "–" if level is None else f"{100 * level:.1f}" if percent else f"{level:.0f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {brnn} | {chance_cell} |")
    for key, label in FLICKR8K_TIME_ROWS:
        lines.append(f"| {label} | " + " | ".join(_flickr8k_cell(summary[v].get(key), False) for v in variants) + " | | |")
    return "\n".join(lines)


def flickr8k_main(args, argv) -> int:
    """Trains `lit` (each seed), `lit-small`'s recipe and untrained heads (first seed each)
    on Flickr8k less 1,000 held-out photos, and scores each SavedModel on those photos."""
    from dual_encoder.cli.data import main as write_shards_cli
    from dual_encoder.data.records import SkipCounter
    from dual_encoder.data.tabular import csv_records
    from dual_encoder.evaluation import datasets

    try:
        paths = flickr8k_layout(args.shared)
    except FileNotFoundError as error:
        print(f"skipped: the real data and towers are not there ({error}); pass --shared DIR")
        return 0
    started = time.perf_counter()
    csvs = flickr8k_split(paths, args.work_dir)
    shards = args.shards_dir / "flickr8k-trainval"
    val_fraction = run_config.get_preset("lit").data.val_fraction  # the split train.py --preset lit --csv writes
    if write_shards_cli(["--csv", str(csvs["trainval"]), "--image-column", "image", "--caption-column", "caption",
                         "--val-fraction", str(val_fraction), "--out", str(shards), "--quiet"]) != 0:  # fmt: skip
        raise RuntimeError(f"writing the Flickr8k shards into {shards} failed (see the error above)")
    shard_seconds = time.perf_counter() - started
    if not args.reuse_features:
        shutil.rmtree(shards / "features", ignore_errors=True)
    skipped = SkipCounter()
    records = csv_records(str(csvs["held_out"]), "image", "caption", skipped=skipped)
    held_out = (records, {"type": "csv", "path": str(csvs["held_out"]), "skipped": skipped.as_dict()})
    animals = datasets.load_animals10(paths["animals"])
    variants = [v for v in FLICKR8K_VARIANTS if v in args.variants]
    per_seed, runs = {v: [] for v in variants}, {v: {} for v in variants}
    for variant in variants:
        for seed in args.seeds if FLICKR8K_VARIANTS[variant][3] else args.seeds[:1]:
            run_dir = args.work_dir / f"flickr8k-{variant}-seed{seed}"
            print(f"[{variant}, seed {seed}] training into {run_dir} ...", flush=True)
            results = train_run(flickr8k_config(paths, variant, seed, args.epochs), [shards], run_dir)
            metrics = {**flickr8k_evaluate(run_dir, held_out, animals, args.work_dir / "embeddings"), **run_metrics(results)}
            per_seed[variant].append(metrics)
            runs[variant][seed] = {"run_dir": str(run_dir), "metrics": metrics, "val_retrieval": results["retrieval"],
                                   "feature_cache": results["feature_cache"],
                                   "duplicate_captions": results["data"]["duplicate_captions"]}  # fmt: skip
            print("  " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if not k.endswith("seconds")), flush=True)
            if not args.keep_models:
                remove_large_files(run_dir)
    shutil.rmtree(args.work_dir / "embeddings", ignore_errors=True)
    summary = {v: summarise(per_seed[v]) for v in variants}
    chance_levels = flickr8k_chance(records)
    table = flickr8k_table(summary, chance_levels)
    bar = {key: {"required": need, "mean": summary["lit"][key]["mean"], "met": summary["lit"][key]["mean"] >= need}
           for key, need in FLICKR8K_BAR.items() if "lit" in summary}  # fmt: skip
    output = {
        "benchmark": "quality-flickr8k", "command": ["benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "seeds": args.seeds, "held_out": {"photos": FLICKR8K_HELD_OUT, "split_seed": FLICKR8K_SPLIT_SEED,
                                          "captions": sum(len(r.captions) for r in records)},
        "configs": {v: flickr8k_config(paths, v, args.seeds[0], args.epochs).to_dict() for v in variants},
        "shard_seconds": shard_seconds, "total_seconds": time.perf_counter() - started, "summary": summary,
        "chance": chance_levels, "brnn": BRNN, "quality_bar": bar, "table": table, "runs": runs,
    }  # fmt: skip
    report(args.out, output, table, bar)
    print(f"total {output['total_seconds']:.0f} s; results: {args.out}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--suite", choices=("lit-small", "flickr8k"), default="lit-small",
                        help="lit-small: coco_mini + fashion_small, the lit-small preset; flickr8k: the lit preset on "
                             "Flickr8k less 1,000 held-out photos, against lit-small's recipe, untrained heads, BRNN, chance")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared folder (data/ and weights/)")
    parser.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/quality.json, "
                                                 "quality-flickr8k.json for --suite flickr8k)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: the preset's)")
    parser.add_argument("--no-floor", action="store_true", help="skip the untrained-heads floors")
    parser.add_argument("--variants", nargs="+", choices=list(FLICKR8K_VARIANTS), default=list(FLICKR8K_VARIANTS),
                        help="--suite flickr8k: which recipes to train and score")
    parser.add_argument("--no-ablation", action="store_true", help="skip the ablation trained without the class prior")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES),
                        help="training data (without fashion_small, the fashion tasks are skipped)")
    parser.add_argument("--shards-dir", type=Path, default=ROOT / "tfrecords" / "quality", help="where the shards are written "
        "(reused when complete)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "quality", help="runs and embedding cache (runs are "
        "retrained)")
    parser.add_argument("--reuse-features", action="store_true",
                        help="keep tower features cached by an earlier run (default: extract again, so that it is timed)")
    parser.add_argument("--keep-models", action="store_true", help="keep each run's checkpoints, model.keras and SavedModel")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("quality.json" if args.suite == "lit-small" else "quality-flickr8k.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.suite == "flickr8k":
        return flickr8k_main(args, argv)
    try:
        paths = shared_layout(args.shared)
    except FileNotFoundError as error:
        print(f"skipped: the real data and towers are not there ({error}); pass --shared DIR")
        return 0
    shard_dirs, shard_seconds = write_data(paths, args.shards_dir, args.sources)
    if not args.reuse_features:
        for folder in shard_dirs.values():
            shutil.rmtree(folder / "features", ignore_errors=True)
    tasks = load_tasks(paths, shard_dirs.get("fashion_small"))
    variants = {"trained": (args.epochs, None)}  # (epochs, class_prior override)
    if not args.no_ablation:
        variants["no_prior"] = (args.epochs, False)
    if not args.no_floor:
        variants["untrained"] = (0, None)
        variants["untrained_no_prior"] = (0, False)
    per_seed, details, runs, trained_on = {v: [] for v in variants}, {}, {v: {} for v in variants}, None
    for seed in args.seeds:
        for variant, (epochs, prior) in variants.items():
            run_dir = args.work_dir / f"{variant}-seed{seed}"
            print(f"[{variant}, seed {seed}] training into {run_dir} ...", flush=True)
            results = train_run(make_config(paths, seed, epochs, prior), shard_dirs.values(), run_dir)
            metrics, reports = evaluate_run(run_dir, tasks, args.work_dir / "embeddings")
            metrics.update(run_metrics(results))
            per_seed[variant].append(metrics)
            runs[variant][seed] = {"run_dir": str(run_dir), "metrics": metrics, "val_retrieval": results["retrieval"],
                                   "final": results["final"], "feature_cache": results["feature_cache"],
                                   "per_class_recall": {name: reports[name]["per_class_recall"]
                                                        for name in PER_CLASS if name in reports}}  # fmt: skip
            details.setdefault(variant, reports)  # prompts, preprocessing, data: the same for every seed
            trained_on = trained_on or results["data"]  # shard folders and their manifests
            print("  " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if not k.endswith("seconds")), flush=True)
            if not args.keep_models:
                remove_large_files(run_dir)
    shutil.rmtree(args.work_dir / "embeddings", ignore_errors=True)
    summary = {v: summarise(per_seed[v]) for v in variants}
    chance_levels = chance(tasks)
    table = markdown_table(summary, chance_levels, len(args.seeds))
    bar = {key: {"required": need, "mean": summary["trained"][key]["mean"], "met": summary["trained"][key]["mean"] >= need}
           for key, need in QUALITY_BAR.items()}  # fmt: skip
    sample = details["trained"]
    output = {
        "benchmark": "quality", "preset": PRESET, "preset_doc": run_config.PRESETS[PRESET].__doc__,
        "config": make_config(paths, args.seeds[0], args.epochs).to_dict(),
        "command": ["benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "seeds": args.seeds, "shard_seconds": shard_seconds, "summary": summary, "chance": chance_levels,
        "quality_bar": bar, "table": table, "runs": runs,
        "preprocessing": sample["coco"]["preprocessing"],
        "prompts": {name: sample[name]["prompts"] for name in sample if "prompts" in sample[name]},
        "data": {"trained_on": trained_on,
                 "coco": {**sample["coco"]["data"], "num_images": sample["coco"]["num_images"],
                          "num_captions": sample["coco"]["num_captions"]},
                 **{name: report["data"] for name, report in sample.items() if name not in ("coco", *ENSEMBLE_REPORTS)}},
        "linear_probe": {name: sample[name]["linear_probe"]["config"] for name in sample if "linear_probe" in sample[name]},
    }  # fmt: skip
    report(args.out, output, table, bar)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Training throughput (pairs/s) with towers trainable, frozen but recomputed, and cached.

  python benchmarks/train_throughput.py                  # Xception-299 + BERT base, random weights
  python benchmarks/train_throughput.py --towers small   # MobileNetV2-224 + BERT small
  python benchmarks/train_throughput.py --towers tiny    # smoke test, seconds
  python benchmarks/train_throughput.py --max-load 1.2   # shared machine: wait for quiet before each part

Nothing downloads: the image tower is keras.applications with weights=None, the text tower a
keras-hub BERT built from its architecture (saved here as a local preset without weights,
loaded through `towers.build_text_tower`, the same path as `--text-encoder DIR --no-pretrained`).
Random weights cost exactly what pretrained ones do.

- trainable / frozen: `fit` on one in-memory batch of raw pixels and tokens, repeated (the input
  pipeline is left out: decoding runs at ~600 images/s here, far above the towers), median of
  --steps steps after a warm-up step that traces the graph.
- cached: whole epochs of `--images` x `--captions-per-image` pairs (90,000 by default, as an
  epoch of the reference recipe) through `feature_cache.pair_dataset` and `fit`, heads only,
  batch 256, features of the towers' sizes; the first epoch (tracing) is reported apart; once
  compiled with XLA, as `train()` compiles the heads-only step, once without.
- extraction: `FeatureCache.extract` on a small real shard, the one-off cost before caching pays.

Prints a table and ratios, and writes the figures with the device to
benchmarks/results/train_throughput-<towers>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import dual_encoder  # noqa: E402,F401  (sets TensorFlow's environment before it is imported)
import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

from dual_encoder import config as run_config  # noqa: E402
from dual_encoder import feature_cache, towers, training  # noqa: E402
from dual_encoder.data import pipeline  # noqa: E402
from dual_encoder.data.records import SkipCounter  # noqa: E402
from dual_encoder.data.sample import sample_records  # noqa: E402
from dual_encoder.data.tfrecords import list_shards, write_shards  # noqa: E402
from dual_encoder.model import DualEncoder  # noqa: E402

BERT = {  # keras-hub BertBackbone architectures of the presets of these names
    "bert_base": dict(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072),
    "bert_small": dict(num_layers=4, num_heads=8, hidden_dim=512, intermediate_dim=2048),
}
TOWER_SETS = {
    "reference": ("xception", None, "bert_base", "Xception-299 + BERT base"),
    "small": ("mobilenetv2", None, "bert_small", "MobileNetV2-224 + BERT small"),
    "tiny": ("tiny", 64, "tiny", "tiny convnet-64 + 2-layer BERT"),
}
BERT_VOCABULARY = 30_522


def build_towers(name: str, sequence_length: int, folder: Path):
    """Random-weight towers of the named set, built through `dual_encoder.towers`."""
    image_name, image_size, text_name, _ = TOWER_SETS[name]
    image = towers.build_image_tower(image_name, weights=None, image_size=image_size)
    captions = [c for r in sample_records(200, image_size=8) for c in r.captions]
    vocabulary = towers.build_vocabulary(captions, size=500)
    if text_name == "tiny":
        return image, towers.build_text_tower("tiny", sequence_length=sequence_length, vocabulary=vocabulary)
    vocabulary += [f"[unused{i}]" for i in range(BERT_VOCABULARY - len(vocabulary))]  # BERT's embedding table size
    preset = folder / text_name
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), max_sequence_length=512, **BERT[text_name])
    backbone.save_to_preset(str(preset))
    keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(str(preset))
    del backbone
    return image, towers.build_text_tower(str(preset), pretrained=False, sequence_length=sequence_length)


def heads_model(image, text, jit_compile: bool = False) -> DualEncoder:
    """The reference heads (MLP into 256-d) and optimizer, as `train()` builds them."""
    config = run_config.reference()
    model = training.build_model(config, image, text)
    model.compile(optimizer=training.make_optimizer(config), jit_compile=jit_compile)
    return model


def step_throughput(image, text, trainable: bool, batch_size: int, steps: int) -> dict:
    towers.freeze(image.model, trainable)
    towers.freeze(text.model, trainable)
    model = heads_model(image, text)
    rng = np.random.default_rng(0)
    captions = [c for r in sample_records(batch_size, image_size=8) for c in r.captions][:batch_size]
    batch = {
        "images": tf.constant(rng.uniform(0, 255, (batch_size, *image.image_size, 3)).astype("float32")),
        "tokens": text.preprocessor(tf.constant(captions)),
        "image_ids": tf.range(batch_size, dtype=tf.int64),
    }
    ends = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    started = time.perf_counter()
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(steps + 1), epochs=1, verbose=0, callbacks=[record])
    warmup, seconds = ends[0] - started, list(np.diff(ends))  # the first step traces
    step = statistics.median(seconds)
    return {"batch_size": batch_size, "steps": steps, "step_seconds": seconds, "warmup_seconds": warmup,
            "pairs_per_second": batch_size / step}


def cached_throughput(image, text, images: int, captions: int, k: int, batch_size: int, epochs: int,
                      jit_compile: bool = False) -> dict:
    towers.freeze(image.model, False)
    towers.freeze(text.model, False)
    model = heads_model(image, text, jit_compile)
    rng = np.random.default_rng(0)
    features = feature_cache.CachedFeatures(
        image_features=rng.standard_normal((images, image.feature_dim), dtype=np.float32),
        image_ids=np.arange(images, dtype=np.int64),
        text_features=rng.standard_normal((images * captions, text.feature_dim), dtype=np.float32),
        caption_counts=np.full(images, captions), shard_sizes=[images])
    config = pipeline.PipelineConfig(batch_size=batch_size, captions_per_image=k, seed=0)
    dataset = feature_cache.pair_dataset(features, config)
    timer = CpuEpochTimer()
    model.fit(dataset, epochs=epochs, callbacks=[timer], verbose=0)
    pairs = images * min(k, captions)
    steady = statistics.median(timer.seconds[1:])
    return {"batch_size": batch_size, "pairs_per_epoch": pairs, "epoch_seconds": timer.seconds,
            "epoch_cpu_seconds": timer.cpu_seconds, "first_epoch_seconds": timer.seconds[0],
            "steady_epoch_seconds": steady, "pairs_per_second": pairs / steady}


class CpuEpochTimer(training.EpochTimer):
    """Also this process's CPU seconds per epoch: on a shared machine, wall time alone misleads."""

    def __init__(self):
        super().__init__()
        self.cpu_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._cpu = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.cpu_seconds.append(time.process_time() - self._cpu)


def extraction_throughput(image, text, images: int, folder: Path) -> dict:
    """The real extraction path on a real shard: decode, tower forward, write."""
    towers.freeze(image.model, False)
    towers.freeze(text.model, False)
    side = max(image.image_size)
    records = sample_records(images, image_size=side, seed=1)
    write_shards(records, str(folder / "shards"), source_info={"type": "sample"}, skipped=SkipCounter(), val_fraction=0.0,
                 images_per_shard=images, progress=False)
    files = list_shards(str(folder / "shards"), "train")
    cache = feature_cache.FeatureCache(image, text)
    cache.extract(files, batch_size=32, progress=False)  # traces both towers once
    for path in cache.paths(files[0]).values():
        tf.io.gfile.remove(path)
    report = cache.extract(files, batch_size=32, progress=False)
    rows, seconds = report.computed_rows, report.compute_seconds
    return {"images": rows["image"], "captions": rows["text"], "seconds": report.seconds, "compute_seconds": seconds,
            "images_per_second": rows["image"] / seconds["image"], "captions_per_second": rows["text"] / seconds["text"]}


def device_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "platform": platform.platform(), "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "keras_hub": keras_hub.__version__,
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "load_average_at_start": os.getloadavg()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--towers", choices=sorted(TOWER_SETS), default="reference")
    parser.add_argument("--sequence-length", type=int, default=32, help="caption tokens (COCO's 99th percentile fits in 32)")
    parser.add_argument("--tower-batch", type=int, default=8, help="batch size of the trainable and frozen steps")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per tower mode")
    parser.add_argument("--images", type=int, default=30_000, help="images per cached epoch")
    parser.add_argument("--captions", type=int, default=5, help="captions per image in the cached features")
    parser.add_argument("--captions-per-image", type=int, default=3, help="pairs per image and epoch (K)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of the cached epochs")
    parser.add_argument("--epochs", type=int, default=3, help="cached epochs (the first traces)")
    parser.add_argument("--extract-images", type=int, default=32, help="images in the extraction shard")
    parser.add_argument("--max-load", type=float, help="before each measurement, wait (up to --wait minutes) for the "
                        "1-minute load average to fall below this: other jobs on the machine slow every figure")
    parser.add_argument("--wait", type=float, default=10, help="minutes to wait for --max-load, per measurement")
    parser.add_argument("--output", type=Path, help="JSON file (default: benchmarks/results/train_throughput-<towers>.json)")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    device = device_info()

    def measured(fn, *fn_args, **kwargs) -> dict:
        """One measurement, after waiting (up to --wait) for a quiet machine; the load is recorded."""
        deadline = time.time() + 60 * args.wait
        while args.max_load is not None and os.getloadavg()[0] > args.max_load and time.time() < deadline:
            time.sleep(5)
        load = os.getloadavg()[0]
        return {**fn(*fn_args, **kwargs), "load_average": [load, os.getloadavg()[0]]}

    with tempfile.TemporaryDirectory() as tmp:
        image, text = build_towers(args.towers, args.sequence_length, Path(tmp))
        cached = (image, text, args.images, args.captions, args.captions_per_image, args.batch_size, args.epochs)
        results = {
            "cached": measured(cached_throughput, *cached, jit_compile=True),
            "cached_no_xla": measured(cached_throughput, *cached),
            "trainable": measured(step_throughput, image, text, True, args.tower_batch, args.steps),
            "frozen_recomputed": measured(step_throughput, image, text, False, args.tower_batch, args.steps),
            "extraction": measured(extraction_throughput, image, text, args.extract_images, Path(tmp)),
        }
    device["load_average_at_end"] = os.getloadavg()
    epoch_pairs = results["cached"]["pairs_per_epoch"]
    modes = ("trainable", "frozen_recomputed", "cached", "cached_no_xla")
    for mode in modes:
        results[mode]["epoch_seconds_for_epoch_pairs"] = epoch_pairs / results[mode]["pairs_per_second"]
    rate = {mode: results[mode]["pairs_per_second"] for mode in modes}
    ratios = {"cached_vs_frozen_recomputed": rate["cached"] / rate["frozen_recomputed"],
              "cached_vs_trainable": rate["cached"] / rate["trainable"],
              "frozen_recomputed_vs_trainable": rate["frozen_recomputed"] / rate["trainable"]}
    extraction = results["extraction"]
    one_off = args.images / extraction["images_per_second"] + args.images * args.captions / extraction["captions_per_second"]
    label = TOWER_SETS[args.towers][3]
    report = {
        "benchmark": "train_throughput", "towers": args.towers, "towers_label": label + " (random weights)",
        "image_tower": image.spec["name"], "image_size": list(image.image_size), "text_tower": text.spec["name"],
        "text_feature_dim": text.feature_dim, "image_feature_dim": image.feature_dim, "sequence_length": args.sequence_length,
        "head": "mlp 256", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device, "results": results, "ratios": ratios,
        "extraction_estimate_seconds": {"images": args.images, "captions": args.images * args.captions, "seconds": one_off},
        "targets": {"cached_epoch_seconds_at_most": 10, "cached_vs_frozen_recomputed_at_least": 500, "applies": args.towers == "reference",
                    "met": bool(results["cached"]["steady_epoch_seconds"] <= 10 and ratios["cached_vs_frozen_recomputed"] >= 500)},
    }

    print(f"\nTraining throughput, {label} (random weights), {args.sequence_length} tokens, MLP heads into 256-d")
    print(f"device: {device['cpu']}, {device['cores']} cores, GPUs: {device['gpus'] or 'none'}, TF {device['tensorflow']}, "
          f"load average {device['load_average_at_start'][0]:.1f} -> {device['load_average_at_end'][0]:.1f}")
    print(f"\n| mode | batch | pairs/s | epoch of {epoch_pairs:,} pairs | vs trainable | load average |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, name in (("trainable", "towers trainable"), ("frozen_recomputed", "towers frozen, recomputed"),
                       ("cached", "towers frozen, cached features (XLA, as train() runs it)"),
                       ("cached_no_xla", "towers frozen, cached features, without XLA")):
        r = results[mode]
        print(f"| {name} | {r['batch_size']} | {r['pairs_per_second']:,.1f} | {_duration(r['epoch_seconds_for_epoch_pairs'])} "
              f"| {rate[mode] / rate['trainable']:,.1f}x | {r['load_average'][0]:.1f} -> {r['load_average'][1]:.1f} |")
    print(f"\ncached vs frozen-recomputed: {ratios['cached_vs_frozen_recomputed']:,.0f}x")
    for mode in ("cached", "cached_no_xla"):
        r = results[mode]
        print(f"{mode} epoch: {r['steady_epoch_seconds']:.1f} s, {statistics.median(r['epoch_cpu_seconds'][1:]):.1f} CPU s "
              f"of this process (first, with tracing: {r['first_epoch_seconds']:.1f} s)")
    print(f"one-off extraction (tower forward, measured on {extraction['images']} images / {extraction['captions']} captions): "
          f"{extraction['images_per_second']:.1f} images/s, {extraction['captions_per_second']:.1f} captions/s -> about "
          f"{_duration(one_off)} for {args.images:,} images x {args.captions} captions, once")
    if args.towers == "reference":
        print(f"targets (cached epoch <= 10 s, >= 500x recomputed): {'met' if report['targets']['met'] else 'NOT met'}")

    output = args.output or ROOT / "benchmarks" / "results" / f"train_throughput-{args.towers}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"wrote {output}")
    return report


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    main()

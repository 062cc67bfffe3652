#!/usr/bin/env python
"""GradCache: peak memory and pairs/s of a batch of 256 with and without chunks, towers trainable.

  python benchmarks/grad_cache_memory.py                    # a random 4-layer CLIP (ViT-256 at 128 px), chunks 64, 32
  python benchmarks/grad_cache_memory.py --chunks 128 64 32 16 --steps 5
  python benchmarks/grad_cache_memory.py --size base        # ViT-B/16-like at 224 px (slow on CPU; for GPUs)

The towers are a randomly initialised keras-hub CLIP saved as a local preset folder and loaded
through `--init` (`towers.load_preset_pair`, the path train.py takes): nothing downloads, and
random weights cost what pretrained ones do. Each configuration runs in a fresh process (so its
peak is its own): the finetune recipe's AdamW step on one in-memory batch of --batch-size
pairs (raw pixels and tokens; the input pipeline is left out), both towers trainable, a
warm-up step that traces the graph, then the median of --steps steps. Memory is the device's
peak allocation on a GPU (`tf.config.experimental.get_memory_info`); on a CPU the process's peak
resident set (ru_maxrss) and that peak less the resident set before the first step (the step's
own activations, gradients and optimizer state).

Prints a table with ratios to the unchunked step and writes benchmarks/results/grad_cache_memory.json.
"""

from __future__ import annotations

import dual_encoder.cli  # noqa: F401  (first: the tools' TensorFlow defaults, before TensorFlow loads)

# isort: split
import argparse
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # CLIP architectures: image side, patch, width, layers, heads, MLP width, text tokens
    "small": dict(image=128, patch=16, hidden=256, layers=4, heads=4, mlp=1024, tokens=32),
    "base": dict(image=224, patch=16, hidden=768, layers=12, heads=12, mlp=3072, tokens=77),
}


def build_preset(path: Path, size: dict) -> Path:
    """A random CLIP of `size` as a local keras-hub preset folder (the tokenizer of the tiny test preset)."""
    import keras_hub

    from dual_encoder.testing import build_tiny_clip_preset

    tiny = build_tiny_clip_preset(path / "tokenizer")
    preprocessor = keras_hub.models.CLIPPreprocessor.from_preset(str(tiny))
    preprocessor.sequence_length = size["tokens"]
    preprocessor.image_converter.image_size = (size["image"], size["image"])
    layer = dict(hidden_dim=size["hidden"], num_layers=size["layers"], num_heads=size["heads"],
                 intermediate_dim=size["mlp"])
    backbone = keras_hub.models.CLIPBackbone(
        vision_encoder=keras_hub.models.CLIPVisionEncoder(patch_size=size["patch"], image_shape=(size["image"],) * 2 + (3,),
                                                          **layer),
        text_encoder=keras_hub.models.CLIPTextEncoder(vocabulary_size=preprocessor.tokenizer.vocabulary_size(),
                                                      embedding_dim=size["hidden"], max_sequence_length=size["tokens"],
                                                      **layer),
        projection_dim=size["hidden"])
    backbone.save_to_preset(str(path / "clip"))
    preprocessor.save_to_preset(str(path / "clip"))
    return path / "clip"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class StepTimer:
    """Seconds of each training step (a Keras callback, made when Keras is loaded)."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_train_batch_begin(self, batch, logs=None):
                self._started = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])  # waits for the step
                self.seconds.append(time.perf_counter() - self._started)

        return Timer()


def child(preset: str, chunk: int, batch_size: int, steps: int) -> dict:
    """One configuration, in this (fresh) process: step times and peak memory."""
    import numpy as np
    import tensorflow as tf

    from dual_encoder import config as run_config
    from dual_encoder import training
    from dual_encoder.data.sample import sample_records

    config = run_config.finetune(preset)
    config.train.batch_size = batch_size
    config.finetune.grad_cache_chunk = chunk or None
    image, text, _ = training.build_towers(config, [])
    model = training.build_model(config, image, text)
    model.compile(optimizer=training.make_optimizer(config, model, steps_per_epoch=steps + 1))
    records = sample_records(num_images=batch_size, image_size=image.image_size[0], seed=0)
    batch = {"images": np.stack([r.image for r in records]).astype("float32"),
             "tokens": text.preprocessor(tf.constant([r.captions[0] for r in records])),
             "image_ids": tf.range(batch_size, dtype=tf.int64)}
    options = tf.data.Options()
    options.autotune.enabled = False  # an autotuned iterator's deletion waits for the tuner (up to 10 s), see train_throughput
    data = tf.data.Dataset.from_tensors(batch).repeat().with_options(options)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    before = peak_rss_mb()
    timer = StepTimer()
    model.fit(data, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[timer])  # the first step traces
    times = timer.seconds
    step = statistics.median(times[1:])
    result = {"chunk": chunk or None, "batch_size": batch_size, "step_seconds": step, "pairs_per_second": batch_size / step,
              "first_step_seconds": times[0], "peak_rss_mb": peak_rss_mb(), "rss_before_steps_mb": before}
    result["step_peak_mb"] = result["peak_rss_mb"] - before
    if gpu:
        result["gpu_peak_mb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return result


def table(rows: list) -> str:
    whole = rows[0]
    memory = "gpu_peak_mb" if "gpu_peak_mb" in whole else "step_peak_mb"
    lines = [f"{'chunk':>8} {'pairs/s':>9} {'x whole':>8} {memory:>14} {'x whole':>8} {'peak RSS MB':>12}"]
    for row in rows:
        lines.append(f"{row['chunk'] or 'whole':>8} {row['pairs_per_second']:9.1f} "
                     f"{row['pairs_per_second'] / whole['pairs_per_second']:8.2f} {row[memory]:14.0f} "
                     f"{row[memory] / max(whole[memory], 1e-9):8.2f} {row['peak_rss_mb']:12.0f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "grad_cache_memory.json")
    parser.add_argument("--child", nargs=2, metavar=("PRESET", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.batch_size, args.steps)))
        return {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        preset = build_preset(Path(tmp), SIZES[args.size])
        for chunk in [0, *args.chunks]:
            done = subprocess.run([sys.executable, __file__, "--child", str(preset), str(chunk), "--batch-size",
                                   str(args.batch_size), "--steps", str(args.steps)], capture_output=True, text=True,
                                  check=False)
            if done.returncode != 0:
                raise SystemExit(f"chunk {chunk}: {done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"chunk {chunk or 'whole'}: {rows[-1]['pairs_per_second']:.1f} pairs/s", flush=True)
    print(table(rows))
    result = {"benchmark": "grad_cache_memory", "size": args.size, "architecture": SIZES[args.size], "rows": rows,
              "device": platform.processor() or platform.machine(),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Input pipeline throughput at the reference image size: shards vs loose JPEG files, and
both against the Xception-299 forward rate, which the pipeline must never fall behind.

  python benchmarks/pipeline_throughput.py                # real COCO photos from ../shared if present
  python benchmarks/pipeline_throughput.py --images 600   # more images (photos are repeated)

Shards are read with `pipeline.pair_dataset` (interleave, parse, pair sampling, shuffle, decode,
resize to 299, batch, in-graph tokenization of the captions); loose files take the usual
`list_files -> read_file -> decode -> resize` route. Xception runs forward with random weights
(nothing downloads). Prints one table with ratios; writes benchmarks/results/pipeline_throughput.json.
"""

from __future__ import annotations

import dual_encoder.cli  # noqa: F401  (first: the tools' TensorFlow defaults, before TensorFlow loads)

# isort: split
import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from dual_encoder import towers
from dual_encoder.data import pipeline
from dual_encoder.data.records import ImageRecord, SkipCounter
from dual_encoder.data.tfrecords import list_shards, write_shards

ROOT = Path(__file__).resolve().parents[1]

SIZE = (299, 299)
SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "coco_mini" / "train2017"


def source_images(count: int, folder: Path) -> tuple[list[Path], str]:
    """`count` JPEG files in `folder`: real photos repeated, or generated 640x480 noise pictures."""
    photos = sorted(SHARED_PHOTOS.glob("*.jpg")) if SHARED_PHOTOS.is_dir() else []
    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if photos:
            shutil.copyfile(photos[i % len(photos)], path)
        else:
            pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            tf.io.write_file(str(path), tf.io.encode_jpeg(pixels, quality=90))
        paths.append(path)
    return paths, ("COCO photos from ../shared" if photos else "generated 640x480 JPEGs")


def rate(dataset, batches_to_skip: int = 1) -> float:
    """Images per second over one pass, after a warm-up batch."""
    iterator = iter(dataset)
    for _ in range(batches_to_skip):
        next(iterator)
    count, start = 0, time.perf_counter()
    for batch in iterator:
        images = batch["images"] if isinstance(batch, dict) else batch
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="images in the test set (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    parser.add_argument("--xception-batches", type=int, default=3, help="timed Xception batches (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline_throughput.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "files").mkdir()
        paths, what = source_images(args.images, tmp / "files")
        captions = ["a photo of something on a table", "two people walking in the street", "a dog on a sofa"]
        records = [ImageRecord(p.stem, captions, "bench", path=str(p)) for p in paths]
        write_shards(records, str(tmp / "shards"), source_info={"type": "bench"}, skipped=SkipCounter(),
                     val_fraction=0.0, images_per_shard=100, progress=False)
        files = list_shards([str(tmp / "shards")], "train")
        text = towers.build_text_tower("tiny", pretrained=False, sequence_length=16,
                                       vocabulary=towers.build_vocabulary(captions * 20, size=100))

        config = pipeline.PipelineConfig(batch_size=args.batch_size, captions_per_image=1, shuffle_buffer=1000, seed=0)
        shards_rate = rate(pipeline.pair_dataset(files, SIZE, text.preprocessor, config, "crop"))
        loose = (
            tf.data.Dataset.list_files(str(tmp / "files" / "*.jpg"), shuffle=True, seed=0)
            .map(lambda p: pipeline.decode_image(tf.io.read_file(p), SIZE, "crop"), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(args.batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        files_rate = rate(loose)

    xception = towers.build_image_tower("xception", weights=None).model
    batch = tf.random.uniform((args.batch_size, *SIZE, 3), 0, 255)
    forward = tf.function(lambda x: xception(x, training=False))
    forward(batch)
    start = time.perf_counter()
    for _ in range(args.xception_batches):
        forward(batch).numpy()
    xception_rate = args.batch_size * args.xception_batches / (time.perf_counter() - start)

    rows = [
        ("TFRecord shards -> pair_dataset (decode, resize 299, tokenize)", shards_rate),
        ("loose JPEG files -> read, decode, resize 299", files_rate),
        ("Xception-299 forward (random weights)", xception_rate),
    ]
    print(f"\nInput pipeline at 299 px, {args.images} images ({what}), batch {args.batch_size}, "
          f"{platform.processor() or platform.machine()}, {tf.config.threading.get_inter_op_parallelism_threads() or 'auto'} "
          f"threads")
    print(f"| {'path':<66} | {'images/s':>9} | {'x Xception':>10} |")
    print(f"|{'-' * 68}|{'-' * 11}|{'-' * 12}|")
    for name, value in rows:
        print(f"| {name:<66} | {value:>9.1f} | {value / xception_rate:>10.1f} |")
    print(f"\nshards / loose files: {shards_rate / files_rate:.2f}x")
    result = {
        "images": args.images, "source": what, "batch_size": args.batch_size,
        "images_per_second": {"shards": shards_rate, "loose_files": files_rate, "xception_forward": xception_rate},
        "ratios": {"shards_over_xception": shards_rate / xception_rate, "files_over_xception": files_rate / xception_rate,
                   "shards_over_files": shards_rate / files_rate},
        "device": [d.name for d in tf.config.list_logical_devices()], "machine": platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

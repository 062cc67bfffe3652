"""`python -m dual_encoder.data`: write a caption source as TFRecord shards (thin CLI over the library)."""

from __future__ import annotations

import argparse
import logging
import sys

from dual_encoder import config as run_config
from dual_encoder.cli import flags
from dual_encoder.cli.sources import add_source_arguments, records_from_args
from dual_encoder.data.tfrecords import write_shards
from dual_encoder.errors import DualEncoderError

EXAMPLES = """examples:
  python -m dual_encoder.data --coco-dir data/coco --split val2017 --out tfrecords/coco_val
  python -m dual_encoder.data --csv data/fashion/styles.csv --image-column id \\
      --image-template 'images/{}.jpg' --caption-column productDisplayName --out tfrecords/fashion
  python -m dual_encoder.data --jsonl captions.jsonl --image-column image --caption-column caption --out tfrecords/mine
  python -m dual_encoder.data --tfds coco_captions --split val --out tfrecords/coco_karpathy_val
  python -m dual_encoder.data --sample --out tfrecords/sample

Interrupted? Rerun the same command: finished shards are kept, the rest are rewritten.
Unreadable images, missing files, empty and duplicate captions are skipped, warned about and
counted in DIR/manifest.json; unreadable caption files are errors naming the file and line.
"""

# The output flags -> the DataConfig field (train.py's flag) whose range they share, so both tools accept the same values.
CONFIG_FIELDS = {"val_fraction": "val_fraction", "seed": "split_seed", "images_per_shard": "images_per_shard",
                 "max_side": "max_side"}
FLAG_BOUNDS = {flag: run_config.bounds_of(run_config.DataConfig, name) for flag, name in CONFIG_FIELDS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dual_encoder.data",
        description="Write images and captions as sharded TFRecords, split by image into train and val.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", required=True, help="output folder (local, gs://, ...); created if needed.")
    out.add_argument(
        "--val-fraction", metavar="F", type=float, default=run_config.VAL_FRACTION,
        help="fraction of images (not captions) held out as 'val'; 0 writes only 'train' (default: %(default)s"
        + flags.range_help(FLAG_BOUNDS["val_fraction"]) + ").",
    )
    out.add_argument("--seed", metavar="S", type=int, default=run_config.SPLIT_SEED,
                     help="seed of the train/val split; train.py --split-seed has the same default (default: %(default)s"
                     + flags.range_help(FLAG_BOUNDS["seed"]) + ").")
    out.add_argument("--images-per-shard", metavar="N", type=int, default=run_config.IMAGES_PER_SHARD,
                     help="default: %(default)s" + flags.range_help(FLAG_BOUNDS["images_per_shard"]) + ".")
    out.add_argument(
        "--max-side", metavar="N", type=int, default=None,
        help="shrink images so the longer side is at most N pixels (default: keep the size"
        + flags.range_help(FLAG_BOUNDS["max_side"]) + ").",
    )
    out.add_argument(
        "--overwrite", action="store_true",
        help="start again in a folder written with another configuration (deletes only its shard files).",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar and no summary line.")
    return parser


def main(argv=None) -> int:
    import tensorflow as tf

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        flags.check_flags(args, FLAG_BOUNDS)  # before reading the source, which can take long
        records, source_info, skipped = records_from_args(args)
        write_shards(
            records, args.out, source_info=source_info, skipped=skipped, val_fraction=args.val_fraction,
            seed=args.seed, images_per_shard=args.images_per_shard, max_side=args.max_side,
            progress=not args.quiet, overwrite=args.overwrite,
        )
    except (DualEncoderError, OSError, tf.errors.OpError) as e:  # bad input or storage: one line; a bug keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2  # as train.py and evaluate.py (and argparse) do for bad input
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to finish (written shards are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

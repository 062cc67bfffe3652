"""The caption-source flags, shared by `python -m dual_encoder.data`, train.py and evaluate.py.

`add_source_arguments` declares the flags once; `records_from_args` turns parsed flags into
records. Neither exits or prints: bad flags raise `SourceArgumentError` (a ValueError) so that
each CLI reports errors its own way.
"""

from __future__ import annotations

import argparse
import os

from dual_encoder.data.coco import coco_records
from dual_encoder.data.collect import is_url
from dual_encoder.data.karpathy import KARPATHY_SPLITS, karpathy_records
from dual_encoder.data.records import ImageRecord, SkipCounter
from dual_encoder.data.tabular import csv_records, jsonl_records
from dual_encoder.data.tfds_source import tfds_records
from dual_encoder.errors import DualEncoderError

SOURCE_FLAGS = ("--coco-dir", "--karpathy-json", "--csv", "--jsonl", "--tfds", "--sample")
SOURCE_DESTS = tuple(flag[2:].replace("-", "_") for flag in SOURCE_FLAGS)  # the attributes they set on the namespace


class SourceArgumentError(DualEncoderError, ValueError):
    """A missing or contradictory source flag."""


def add_source_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Adds the mutually exclusive source flags and the options that go with them."""
    group = parser.add_argument_group("caption source (exactly one)" if required else "caption source")
    which = group.add_mutually_exclusive_group(required=required)
    which.add_argument(
        "--coco-dir", metavar="DIR",
        help="MS-COCO in its official layout: captions in DIR/annotations/captions_<SPLIT>.json, "
        "images in DIR/<SPLIT>/ (2014 and 2017 names). Needs --split.",
    )
    which.add_argument(
        "--karpathy-json", metavar="FILE",
        help="a Karpathy split file (dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json): the COCO "
        "5k/1k, Flickr30k and Flickr8k retrieval splits papers and CLIP_benchmark report on. Needs --image-root and "
        f"--split ({'|'.join(KARPATHY_SPLITS)}).",
    )
    which.add_argument(
        "--csv", metavar="FILE",
        help="a CSV with a header row; one row per caption or several rows per image (merged). "
        "Needs --image-column and --caption-column.",
    )
    which.add_argument(
        "--jsonl", metavar="FILE",
        help="one JSON object per line; the caption value may be a string or a list. "
        "Needs --image-column and --caption-column.",
    )
    which.add_argument(
        "--tfds", metavar="NAME",
        help="a TensorFlow Datasets name, e.g. coco_captions (splits train, val, test, restval). "
        "Downloads on first use unless prepared in --tfds-data-dir. Needs --split.",
    )
    which.add_argument(
        "--sample", action="store_true",
        help="the built-in generated sample set: coloured shapes with captions, no files needed.",
    )
    group.add_argument(
        "--split", metavar="SPLIT",
        help="COCO image folder (val2017, train2014, ...), TFDS split, or with --karpathy-json one of "
        f"{', '.join(KARPATHY_SPLITS)} (several joined by commas, e.g. train,restval: COCO's 113k training images).",
    )
    group.add_argument(
        "--captions-json", metavar="FILE",
        help="with --coco-dir: a captions JSON other than DIR/annotations/captions_<SPLIT>.json.",
    )
    group.add_argument(
        "--image-root", metavar="DIR",
        help="with --karpathy-json: where the images are; COCO: the folder holding val2014/ and train2014/ "
        "(DIR/<filepath>/<filename>), Flickr: the folder of JPEGs (DIR/<filename>).",
    )
    group.add_argument("--image-column", metavar="C", help="with --csv/--jsonl: the column holding the image path or id.")
    group.add_argument("--caption-column", metavar="C", help="with --csv/--jsonl: the column holding the caption.")
    group.add_argument(
        "--image-template", metavar="T",
        help="with --csv/--jsonl: turns the image column value into a path, e.g. 'images/{}.jpg'. "
        "Relative paths resolve against the CSV/JSONL file's folder; images read from outside it (absolute or ../ "
        "paths) are counted in the summary and manifest.json.",
    )
    group.add_argument("--tfds-data-dir", metavar="DIR", help="with --tfds: where TFDS keeps prepared datasets.")
    group.add_argument(
        "--sample-images", metavar="N", type=int, default=3000,
        help="with --sample: how many images to generate (default: %(default)s).",
    )


def parse_source_flags(*flags: str) -> argparse.Namespace:
    """The caption-source flags alone, parsed as every tool declares them (for scripts and tests)."""
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)
    return parser.parse_args(list(flags))


def records_from_args(args: argparse.Namespace) -> tuple[list[ImageRecord], dict, SkipCounter]:
    """(records, source_info, skipped) for the source the flags name; source_info goes to the manifest."""
    skipped = SkipCounter()
    if args.coco_dir:
        split = _need(args, "split", "--coco-dir", "e.g. --split val2017")
        records = coco_records(args.coco_dir, split, args.captions_json, skipped=skipped)
        info = {"type": "coco", "coco_dir": _absolute(args.coco_dir), "split": split,
                "captions_json": args.captions_json and _absolute(args.captions_json)}
    elif args.karpathy_json:
        split = _need(args, "split", "--karpathy-json", f"one of {', '.join(KARPATHY_SPLITS)}, e.g. --split test")
        image_root = _need(args, "image_root", "--karpathy-json", "the folder the file's images are in")
        records = karpathy_records(args.karpathy_json, image_root, split, skipped=skipped)
        info = {"type": "karpathy", "path": _absolute(args.karpathy_json), "image_root": _absolute(image_root),
                "split": split}
    elif args.csv or args.jsonl:
        path = args.csv or args.jsonl
        read = csv_records if args.csv else jsonl_records
        records = read(path, args.image_column, args.caption_column, args.image_template, skipped=skipped)
        info = {"type": "csv" if args.csv else "jsonl", "path": _absolute(path), "image_column": args.image_column,
                "caption_column": args.caption_column, "image_template": args.image_template}
    elif args.tfds:
        split = _need(args, "split", "--tfds", "e.g. --split val")
        records = tfds_records(args.tfds, split, args.tfds_data_dir, skipped=skipped)
        info = {"type": "tfds", "name": args.tfds, "split": split, "data_dir": args.tfds_data_dir}
    elif args.sample:
        from dual_encoder.data.sample import sample_records  # generated in memory; only this source needs it

        records = sample_records(num_images=args.sample_images)
        info = {"type": "sample", "num_images": args.sample_images}
    else:
        raise SourceArgumentError(f"no caption source given: pass one of {', '.join(SOURCE_FLAGS)}")
    return records, info, skipped


def source_given(args: argparse.Namespace) -> bool:
    """Whether the flags name a caption source (for tools where the source flags are optional)."""
    return any(getattr(args, dest, None) for dest in SOURCE_DESTS)


def _need(args: argparse.Namespace, name: str, flag: str, example: str) -> str:
    value = getattr(args, name)
    if not value:
        raise SourceArgumentError(f"{flag} needs --{name.replace('_', '-')} ({example})")
    return value


def _absolute(path: str) -> str:
    """So that a rerun from another working directory still matches the folder's plan."""
    return path if is_url(path) else os.path.abspath(path)

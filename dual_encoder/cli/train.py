"""Train a CLIP-style dual encoder: `python train.py --captions-per-image 3`.

With no data flag it trains the `sample` preset (tiny towers) on the built-in generated
sample, offline, in minutes. With a caption source (COCO, CSV/JSONL, TFDS) it writes TFRecord
shards first, then trains the reference recipe (Xception + BERT base) unless --preset says
otherwise; with --init PRESET it fine-tunes a pretrained CLIP or SigLIP (the `finetune` recipe).
All logic lives in `dual_encoder`; this file only parses flags and reports.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from dual_encoder import config as run_config
from dual_encoder.cli import flags
from dual_encoder.cli.help import HelpFormatter
from dual_encoder.cli.sources import add_source_arguments, records_from_args, source_given
from dual_encoder.errors import DualEncoderError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Writes checkpoints, log.csv, curves.png, results.json and "
        "saved_model/ into --output-dir; rerun the same command to resume an interrupted run.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted({**run_config.PRESETS, **run_config.INIT_PRESETS}), default=None,
                        help="named configuration to start from (default: finetune with --init, else sample without data "
                             "flags, reference with them)")
    parser.add_argument("--tfrecords", nargs="+", metavar="DIR",
                        help="train on shards already written by python -m dual_encoder.data (several folders are read as one "
                             "dataset)")
    parser.add_argument("--shards-dir", metavar="DIR",
                        help="where a caption source's shards are written (default: tfrecords/<source>); reused when complete")
    parser.add_argument("--output-dir", metavar="DIR", help="run folder (default: runs/<preset>)")
    parser.add_argument("--no-export", action="store_true", help="skip the SavedModel export at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_source_arguments(parser, required=False)
    flags.add_config_arguments(parser)
    return parser.parse_args(argv)


def _source_name(info: dict) -> str:
    parts = [info["type"]] + [str(info[k]) for k in ("split", "name") if info.get(k)]
    if info.get("path"):
        parts.append(os.path.splitext(os.path.basename(info["path"]))[0])
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))


def prepare_shards(args, config) -> list[str]:
    """Shard folders to train on: given ones, or written now from the chosen source."""
    from dual_encoder.data.tfrecords import write_shards

    if args.tfrecords:
        return args.tfrecords
    records, info, skipped = records_from_args(args)
    shards_dir = args.shards_dir or os.path.join("tfrecords", _source_name(info))
    write_shards(
        records, shards_dir, source_info=info, skipped=skipped, val_fraction=config.data.val_fraction,
        seed=config.data.split_seed, images_per_shard=config.data.images_per_shard, max_side=config.data.max_side,
        progress=not args.quiet,
    )
    return [shards_dir]


def main(argv=None) -> int:
    args = parse_args(argv)
    has_data = bool(args.tfrecords) or source_given(args)
    if not has_data and args.init:
        args.sample = True
        print(f"No data given: fine-tuning --init {args.init} on the built-in generated sample.")
    elif not has_data:
        args.sample = True
        print("No data given: training the `sample` preset (tiny towers) on the built-in generated sample.\n"
              "For COCO: python train.py --coco-dir DIR --split train2017 (needs DIR/annotations/captions_train2017.json,\n"
              "DIR/train2017/ and pretrained weights, or --no-pretrained / local --image-encoder and --text-encoder dirs).")
    preset = args.preset or ("finetune" if args.init else "sample" if args.sample and not args.tfrecords else "reference")
    output_dir = args.output_dir or os.path.join("runs", preset)

    from dual_encoder.training import trainer

    try:
        config = flags.apply_overrides(run_config.get_preset(preset), args).validate()  # before any shard is written
        shard_dirs = prepare_shards(args, config)
        # Keras' per-batch progress bar rewrites one line; in a log file (no terminal) one line per epoch reads better.
        verbose = 0 if args.quiet else "auto" if sys.stdout.isatty() else 2
        results = trainer.train(config, shard_dirs, output_dir, verbose=verbose, export=not args.no_export)
    except (DualEncoderError, OSError) as error:  # bad input or an unusable file: one line; a bug keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume from the last finished epoch ({output_dir}/backup)",
              file=sys.stderr)
        return 130
    report(results, output_dir)
    return 0


def report(results: dict, output_dir: str) -> None:
    retrieval = results["retrieval"]
    t2i, i2t = retrieval["text_to_image"], retrieval["image_to_text"]
    images = retrieval.get("num_images") or 0
    chance = f" (chance R@5 {min(1.0, 5 / images):.1%})" if images else ""
    done, now = results["epochs_run"], results["epochs_this_call"]
    epochs = lambda n: f"{n} epoch{'s' if n != 1 else ''}"  # noqa: E731
    if now == 0:
        print(f"\nNothing left to train: {output_dir} holds a finished run of {epochs(done)} (pass another --output-dir "
              f"to train again). Its {retrieval['split']} retrieval over {images} images{chance}:")
    else:
        resumed = f" ({epochs(now)} in this call, resumed from the backup)" if now < done else ""
        print(f"\nTrained {epochs(done)}{resumed}, {results['timings']['fit_seconds']:.0f} s of fitting. "
              f"{retrieval['split']} retrieval over {images} images{chance}:")
    print(f"  text->image R@1/5/10: {t2i['R@1']:.1%} / {t2i['R@5']:.1%} / {t2i['R@10']:.1%}")
    print(f"  image->text R@1/5/10: {i2t['R@1']:.1%} / {i2t['R@5']:.1%} / {i2t['R@10']:.1%}")
    print(f"Outputs in {output_dir}: results.json, curves.png, log.csv, checkpoints/, model.keras"
          + (", saved_model/" if results["outputs"]["saved_model"] else ""))
    if results["outputs"]["saved_model"]:
        from dual_encoder.export import USAGE

        print("Use the SavedModel from any TensorFlow code:\n" + USAGE.format(path=results["outputs"]["saved_model"]))


if __name__ == "__main__":
    sys.exit(main())

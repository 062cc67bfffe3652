"""`evaluate.py wise-ft`: a run's WiSE-FT trade-off, domain against reference, one row per alpha.

  python evaluate.py wise-ft --run runs/clip-mine --alphas 0 0.25 0.5 0.75 1 \
      --reference-dataset animals10 --reference-dir DIR

Each alpha mixes the run's weights as (1 - alpha) * pretrained + alpha * fine-tuned (the
checkpoint of --init is rebuilt from its preset, the fine-tuned weights come from the run's
model.keras), then measures retrieval on the validation shards the run trained beside and
zero-shot accuracy on the reference set. Writes wise_ft.json and wise_ft.png; export the chosen
mix by running the same train.py command again with --wise-ft ALPHA. All logic lives in
dual_encoder.training.wise_ft.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dual_encoder.cli.help import HelpFormatter
from dual_encoder.errors import InvalidArgumentError


def build_parser() -> argparse.ArgumentParser:
    from dual_encoder.training.wise_ft import DEFAULT_ALPHAS

    parser = argparse.ArgumentParser(prog="evaluate.py wise-ft", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--run", required=True, metavar="DIR", help="a run folder train.py --init finished")
    parser.add_argument("--alphas", nargs="+", type=float, default=list(DEFAULT_ALPHAS), metavar="A",
                        help="mixing weights of the fine-tuned model, each in [0, 1] (0: the pretrained checkpoint, "
                             "1: the fine-tuned model)")
    domain = parser.add_argument_group("your validation data (retrieval)")
    domain.add_argument("--shards", nargs="+", metavar="DIR",
                        help="shard folders (default: the ones the run trained on, from its results.json)")
    domain.add_argument("--split", default="val", help="their split to evaluate")
    domain.add_argument("--no-domain", action="store_true", help="measure the reference set only")
    domain.add_argument("--skip-damaged-shards", action="store_true", help="leave out shards that fail their checksums")
    reference = parser.add_argument_group("reference zero-shot set (what fine-tuning may forget)")
    reference.add_argument("--reference-dataset", metavar="NAME",
                           help="animals10 (Kaggle layout DIR/raw-img/<class>/), folder (DIR/<class>/<image>) or tfds:NAME")
    reference.add_argument("--reference-dir", metavar="DIR", help="its folder (the TFDS data_dir for tfds:NAME)")
    reference.add_argument("--reference-split", metavar="SPLIT", help="the split of a tfds:NAME set (default: test)")
    reference.add_argument("--templates", default="auto", metavar="SET_OR_FILE",
                           help="prompt templates, as evaluate.py --templates (default: the dataset's own set)")
    parser.add_argument("--batch-size", type=int, default=32, help="images or captions per forward pass")
    parser.add_argument("--output-dir", metavar="DIR", help="where wise_ft.json and wise_ft.png go (default: RUN/wise_ft)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _domain(args):
    from dual_encoder.evaluation import shard_records

    if args.no_domain:
        return None
    shards = args.shards
    if not shards:
        try:
            shards = json.loads((Path(args.run) / "results.json").read_text())["data"]["shard_dirs"]
        except (OSError, ValueError, KeyError):
            raise InvalidArgumentError(f"--run {args.run}: its results.json names no shards; pass --shards DIR") from None
    return shard_records(shards, args.split, args.skip_damaged_shards)


def _reference(args):
    from dual_encoder.evaluation.datasets import load_classification_dataset

    if not args.reference_dataset:
        if args.reference_dir:
            raise InvalidArgumentError("--reference-dir needs --reference-dataset (animals10, folder or tfds:NAME)")
        return None
    data = load_classification_dataset(args.reference_dataset, args.reference_dir, args.reference_split)
    return data, args.templates, args.reference_dataset


def run(args) -> Path:
    from dual_encoder.training import wise_ft

    alphas = [wise_ft.check_alpha(alpha) for alpha in args.alphas]  # before anything loads
    reference, domain = _reference(args), _domain(args)
    report = wise_ft.sweep(args.run, alphas, domain, reference, args.batch_size, progress=not args.quiet)
    output_dir = Path(args.output_dir or Path(args.run) / "wise_ft")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "wise_ft.json").write_text(json.dumps(report, indent=2, default=str))
    plot = wise_ft.save_plot(report, output_dir / "wise_ft.png")
    print(f"WiSE-FT of {args.run} (from {report['init']}):\n{wise_ft.table(report)}")
    print(f"Written: {output_dir / 'wise_ft.json'}, {plot}. Export a mix: the run's train.py command with --wise-ft ALPHA")
    return output_dir

"""Evaluate a dual encoder: zero-shot classification, image<->text retrieval, text-to-image search.

  python evaluate.py --model runs/sample --dataset animals10 --data-dir DIR
  python evaluate.py --model runs/sample --dataset coco --coco-dir DIR --split val2017
  python evaluate.py --model runs/sample --dataset csv --csv styles.csv --image-column id \
      --image-template 'images/{}.jpg' --label-column articleType --shards tfrecords/fashion --split val
  python evaluate.py search "cars on the street at night" --model runs/sample --images DIR --top-k 9
  python evaluate.py index --model runs/sample --images DIR --index INDEX
  python evaluate.py serve --model runs/sample --images DIR          # a search page at http://127.0.0.1:8000
  python evaluate.py export-search --index INDEX --out DIR            # one SavedModel that searches the index

--model takes a training output folder (with saved_model/ inside), an exported SavedModel, or a
keras-hub CLIP/SigLIP preset name or local preset directory (the pretrained reference).
report.json and the figures go to --output-dir. All logic lives in dual_encoder.evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import sys
from pathlib import Path

import dual_encoder
from dual_encoder import config as run_config
from dual_encoder.cli import flags
from dual_encoder.cli.help import HelpFormatter
from dual_encoder.errors import DualEncoderError, InvalidArgumentError

CLASSIFICATION = ("animals10", "folder", "tfds:NAME", "csv (with --label-column)")
# --dataset value for retrieval -> the caption-source flag (attribute) that provides the data
RETRIEVAL = {"coco": "coco_dir", "karpathy": "karpathy_json", "csv": "csv", "jsonl": "jsonl", "tfds-captions": "tfds",
             "sample": "sample", "tfrecords": "shards"}  # fmt: skip
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dual_encoder" / "embeddings"
DEFAULT_SHOTS = ["1", "4", "16", "all"]  # linear-probe training images per class
# `evaluate.py NAME ...` -> the module that parses (build_parser) and runs (run) that subcommand
SUBCOMMAND_MODULES = {"serve": "dual_encoder.cli.serve", "export-search": "dual_encoder.cli.search_export",
                      "benchmark": "dual_encoder.cli.benchmark"}
SUBCOMMAND_MODULES["wise-ft"] = "dual_encoder.cli.wise_ft"
# The numeric flags' ranges, checked before any data or model loads (argparse checks only the type).
FLAG_BOUNDS = {
    "batch_size": run_config.COUNT,
    "image_size": dataclasses.replace(run_config.IMAGE_SIDE, optional=True),
    "top_k": run_config.COUNT,
    "top_classes": run_config.Bounds(2, optional=True),  # one class is no classification
    "probe_steps": run_config.COUNT,
    "similarity_n": run_config.COUNT,
}


OUTPUT_DIR_HELP = ("where report.json and PNGs go (default: outputs/zeroshot-<dataset>, outputs/retrieval-<source> "
                   "or outputs/search)")
CACHE_DIR_HELP = "embedding cache, keyed by model + file path + size + mtime"


def add_model_arguments(parser: argparse.ArgumentParser, output_dir_help: str = OUTPUT_DIR_HELP,
                        model_default_help: str = "") -> None:
    """Flags shared by evaluation and search: which model, how to feed it, where results go.
    `model_default_help`: where --model comes from when it is left out (required otherwise)."""
    group = parser.add_argument_group("model and output")
    group.add_argument("--model", required=not model_default_help, metavar="PATH_OR_PRESET",
                       help="training output folder (with saved_model/), exported SavedModel, or keras-hub "
                       "CLIP/SigLIP preset name (e.g. clip_vit_base_patch16; downloads only when online) or "
                       "local preset directory" + model_default_help)  # fmt: skip
    group.add_argument("--output-dir", metavar="DIR", help=output_dir_help)
    add_embedding_arguments(group)


def add_embedding_arguments(group, cache_dir_help: str = CACHE_DIR_HELP,
                            no_cache_help: str = "neither read nor write the embedding cache") -> None:
    """How a model is fed and its embeddings cached: every command that embeds images takes these."""
    group.add_argument("--batch-size", type=int, default=32,
                       help="images or captions per forward pass" + flags.range_help(FLAG_BOUNDS["batch_size"]))
    group.add_argument("--image-size", type=int, metavar="N",
                       help="side images are brought to before batching (default: the model's own, else 224)"
                       + flags.range_help(FLAG_BOUNDS["image_size"]))
    group.add_argument("--resize", choices=("squash", "crop", "pad"),
                       help="how images become square before batching (default: the model's training mode; "
                       "crop for CLIP/SigLIP)")  # fmt: skip
    group.add_argument("--cache-dir", metavar="DIR", default=str(DEFAULT_CACHE), help=cache_dir_help)
    group.add_argument("--no-cache", action="store_true", help=no_cache_help)
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from dual_encoder.cli.sources import add_source_arguments

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Text-to-image search over a folder: python evaluate.py search --help; index a photo folder once for "
        "repeated searches: python evaluate.py index --help; a search page and HTTP API: python evaluate.py serve --help; "
        "one SavedModel that searches an index: python evaluate.py export-search --help",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser)
    task = parser.add_argument_group("what to evaluate")
    task.add_argument("--dataset", metavar="NAME",
                      help=f"zero-shot classification: {', '.join(CLASSIFICATION)}; retrieval: "
                      f"{', '.join(RETRIEVAL)} (default: retrieval on the caption source flag given)")  # fmt: skip
    task.add_argument("--data-dir", metavar="DIR",
                      help="animals10: the Kaggle download (DIR/raw-img/<Italian class>/); folder: DIR/<class>/<image>; "
                      "tfds:NAME: the TFDS data_dir where NAME is prepared; coco: same as --coco-dir")  # fmt: skip
    task.add_argument("--shards", nargs="+", metavar="DIR",
                      help="retrieval on TFRecord shards written by python -m dual_encoder.data (use --split, default val); "
                      "with --label-column: classify only the images in that split of these shards (e.g. held-out val)")
    task.add_argument("--skip-damaged-shards", action="store_true",
                      help="with --shards: leave out shards that fail their record checksums (otherwise a damaged shard "
                      "stops the evaluation, naming it and how to rewrite it)")
    zs = parser.add_argument_group("zero-shot classification")
    zs.add_argument("--templates", metavar="SET_OR_FILE", default="default",
                    help="prompt templates: a set (default = 'a photo of a {}.', imagenet = CLIP's 80, imagenet-7, "
                    "animals, objects, food, pets, flowers, satellite), 'auto' (the dataset's own set), a file with "
                    "one template per line, or one template containing {}")  # fmt: skip
    zs.add_argument("--label-column", metavar="C",
                    help="with --csv: zero-shot classification by this column (e.g. articleType of Fashion's styles.csv) "
                    "instead of caption retrieval; also needs --image-column (and --image-template)")
    zs.add_argument("--top-classes", type=int, metavar="N",
                    help="keep only the N classes with the most images (and their images); the report counts the rest"
                    + flags.range_help(FLAG_BOUNDS["top_classes"]))
    zs.add_argument("--baseline", choices=("linear-probe",),
                    help="also train a linear probe on the same frozen image features")
    zs.add_argument("--shots", nargs="+", metavar="K",
                    help="linear probe: training images per class (integers and/or 'all'; default: 1 4 16 all); "
                    "needs --baseline linear-probe")
    zs.add_argument("--probe-steps", type=int, default=300,
                    help="linear probe: full-batch Adam steps" + flags.range_help(FLAG_BOUNDS["probe_steps"]))
    rt = parser.add_argument_group("retrieval")
    rt.add_argument("--similarity-n", type=int, default=8, metavar="N",
                    help="images (and their first captions) in similarity_matrix.png"
                    + flags.range_help(FLAG_BOUNDS["similarity_n"]))
    add_source_arguments(parser, required=False)
    return parser


def build_search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate.py search",
        description="Text-to-image search over a folder. The folder's embeddings are cached and only new or "
        "changed files are embedded again; prints paths and scores, writes search_results.png/.json.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("query", help="the text to search for, e.g. 'cars on the street at night'")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--images", metavar="DIR", help="folder of images (sub-folders included), embedded as needed")
    where.add_argument("--index", metavar="PATH", help="an index folder built by evaluate.py index (searched with its model)")
    parser.add_argument("--top-k", type=int, default=9,
                        help="how many matches to show" + flags.range_help(FLAG_BOUNDS["top_k"]))
    add_model_arguments(parser, model_default_help=" (default with --index: the model the index was built with; "
                        "needed with --images)")
    return parser


def build_index_parser() -> argparse.ArgumentParser:
    from dual_encoder.search import BACKENDS

    parser = argparse.ArgumentParser(
        prog="evaluate.py index",
        description="Build or update the index folder of a photo folder: only new or changed files are embedded, "
        "deleted ones leave, an index of another model is refused (--rebuild starts afresh). A build killed at any "
        "point leaves the old index whole; rerun to finish.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of images (sub-folders included)")
    parser.add_argument("--index", required=True, metavar="PATH", help="the index folder (created if needed)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="exact search, or FAISS HNSW / IVF-PQ (faiss: HNSW up to 20 million "
                        "images, IVF-PQ beyond); auto picks by size (exact below 20,000 images)")
    parser.add_argument("--rebuild", action="store_true", help="index again from scratch, e.g. for another --model")
    add_model_arguments(parser)
    return parser


def run_index(args) -> Path:
    from dual_encoder.evaluation import runs
    from dual_encoder.search import build_index

    runs.list_images(args.images)  # a bad folder fails before the model loads
    embedder, cache = _embedder_and_cache(args)
    _, report = build_index(embedder, args.images, args.index, args.backend, args.rebuild, cache=cache)
    skipped = sum(report["skipped"].values())
    print(f"indexed {report['images']} images into {args.index} ({report['embedded']} embedded, "
          f"{report['from_cache']} from the embedding cache, {report['reused']} reused, {report['removed']} removed, "
          f"{skipped} unreadable skipped); backend {report['backend']}, "
          f"recall@10 against exact search {report['recall_at_10']:.3f}")
    return Path(args.index)


def _embedder_and_cache(args):
    from dual_encoder.evaluation.embedders import load_embedder
    from dual_encoder.evaluation.retrieval import EmbeddingCache

    embedder = load_embedder(args.model, batch_size=args.batch_size, progress=not args.quiet)
    if args.image_size is not None or args.resize:
        embedder.prep = embedder.prep.replace(side=args.image_size, mode=args.resize)
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir, embedder.fingerprint())
    return embedder, cache


def _write_report(report: dict, output_dir: Path, argv) -> Path:
    report = {**report, "command": ["evaluate.py", *argv],
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "version": dual_encoder.__version__}  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


def _retrieval_records(args):
    """Records and source description for the retrieval source the flags name."""
    from dual_encoder.cli.sources import SourceArgumentError, records_from_args
    from dual_encoder.evaluation.runs import shard_records

    if args.dataset == "coco" and not args.coco_dir:
        args.coco_dir = args.data_dir
    if args.dataset and not getattr(args, RETRIEVAL[args.dataset], None):
        flag = "--" + RETRIEVAL[args.dataset].replace("_", "-")
        raise SourceArgumentError(f"--dataset {args.dataset} needs {flag}")
    if args.shards:
        return shard_records(args.shards, args.split or "val", args.skip_damaged_shards)
    records, info, skipped = records_from_args(args)
    return records, {**info, "skipped_by_source": skipped.as_dict()}


def _classification_data(args):
    """The labelled images the flags name: a dataset by name, or a CSV label column."""
    from dual_encoder import evaluation
    from dual_encoder.evaluation import datasets

    if args.label_column:
        if not args.csv:
            raise InvalidArgumentError("--label-column needs --csv FILE (and --image-column)")
        only_ids = (evaluation.shard_image_ids(args.shards, args.split or "val", args.skip_damaged_shards)
                    if args.shards else None)
        data = datasets.load_csv_classification(args.csv, args.image_column, args.label_column, args.image_template, only_ids)
        if args.shards:
            data.info["restricted_to"] = {"shards": [str(d) for d in args.shards], "split": args.split or "val"}
    else:
        data = datasets.load_classification_dataset(args.dataset, args.data_dir, args.split)
    return datasets.keep_top_classes(data, args.top_classes) if args.top_classes else data


def _print_unreadable(report: dict, shown: int = 5) -> None:
    names = report.get("unreadable_images", [])
    if names:
        total = report["num_skipped_images"]
        more = f" ... ({total} in all, listed in report.json)" if total > shown else ""
        print("  unreadable: " + ", ".join(names[:shown]) + more)


def run_zero_shot(args, argv) -> Path:
    from dual_encoder import evaluation
    from dual_encoder.evaluation import plots, probe

    data = _classification_data(args)  # layout errors before loading a model
    if args.shots and not args.baseline:
        raise InvalidArgumentError("--shots sets the linear probe's training images: add --baseline linear-probe")
    shots = probe.parse_shots(args.shots or DEFAULT_SHOTS) if args.baseline else None
    embedder, cache = _embedder_and_cache(args)
    config = probe.ProbeConfig(steps=args.probe_steps)
    report = evaluation.zero_shot(embedder, data, args.templates, args.dataset, cache, shots, config)
    output_dir = Path(args.output_dir or f"outputs/zeroshot-{args.dataset.replace(':', '-')}")
    plots.save_confusion_matrix(report["confusion_matrix"], report["class_names"], output_dir / "confusion_matrix.png",
                                title=f"Zero-shot on {args.dataset} (accuracy {report['accuracy']:.1%})")  # fmt: skip
    print(f"zero-shot {args.dataset}: {report['num_examples']} images, {len(report['class_names'])} classes, "
          f"{report['prompts']['num_templates']} template(s), {report['num_skipped_images']} unreadable skipped")
    _print_unreadable(report)
    top5 = f"  top-5 {report['top5_accuracy']:.4f}" if len(report["class_names"]) > 5 else ""  # 1.0 by definition otherwise
    print(f"  accuracy {report['accuracy']:.4f}{top5}  macro-F1 {report['macro_f1']:.4f}"
          f"  mean per-class recall {report['mean_per_class_recall']:.4f}")  # fmt: skip
    for k, result in report.get("linear_probe", {}).get("results", {}).items():
        what = "zero-shot, same test images" if k == "zero-shot" else f"linear probe, {k}-shot"
        print(f"  {what:<28} accuracy {result.get('accuracy', float('nan')):.4f}")
    return _write_report(report, output_dir, argv)


def run_retrieval(args, argv) -> Path:
    from dual_encoder import evaluation
    from dual_encoder.evaluation import plots

    records, info = _retrieval_records(args)
    embedder, cache = _embedder_and_cache(args)
    report, arrays = evaluation.retrieval_run(embedder, records, info, cache)
    output_dir = Path(args.output_dir or f"outputs/retrieval-{info['type']}")
    similarity, images, captions = evaluation.similarity_preview(arrays, embedder.prep, args.similarity_n)
    plots.save_similarity_matrix(similarity, images, captions, output_dir / "similarity_matrix.png")
    by_source = ", ".join(f"{reason} {count}" for reason, count in info.get("skipped_by_source", {}).items())
    print(f"retrieval ({info['type']}): {report['num_images']} images, {report['num_captions']} captions, "
          f"{report['num_skipped_images']} unreadable skipped" + (f"; skipped by the source: {by_source}" if by_source else ""))
    _print_unreadable(report)
    for direction in ("text_to_image", "image_to_text"):
        r = report[direction]
        print(f"  {direction:<13} R@1 {r['R@1']:.4f}  R@5 {r['R@5']:.4f}  R@10 {r['R@10']:.4f}"
              f"  mean rank {r['mean_rank']:.1f}  median rank {r['median_rank']:.1f}")  # fmt: skip
    print(f"  pair accuracy top-1 {report['top1_pair_accuracy']:.4f}  top-100 {report['top100_pair_accuracy']:.4f}")
    return _write_report(report, output_dir, argv)


def run_search(args) -> Path:
    from dual_encoder import evaluation
    from dual_encoder.data.records import SkipCounter

    if args.index:
        return _search_index(args)
    if not args.model:
        raise InvalidArgumentError("evaluate.py search --images DIR needs --model (the model that embeds the images)")
    listing_skips = SkipCounter()
    paths = evaluation.list_images(args.images, listing_skips)  # a bad folder fails before the model loads
    embedder, cache = _embedder_and_cache(args)
    index, skipped = evaluation.folder_index(embedder, args.images, cache, listed=(paths, listing_skips))
    matches = evaluation.search(embedder, index, args.query, args.top_k)
    return _show_matches(args, embedder, matches, args.images, len(index), skipped.as_dict())


def _search_index(args) -> Path:
    from dual_encoder.search import load_index
    from dual_encoder.search.index import index_model

    args.model = args.model or index_model(args.index)
    embedder, _ = _embedder_and_cache(args)
    index = load_index(args.index, embedder.fingerprint())
    found = index.search_text(embedder, args.query, args.top_k)
    matches = [(str(index.root / path), score) for path, score in found]
    return _show_matches(args, embedder, matches, str(index.root), len(index), index.manifest.get("skipped", {}))


def _show_matches(args, embedder, matches, root, indexed: int, skipped: dict) -> Path:
    """Prints the matches and writes search_results.png and .json."""
    from dual_encoder.evaluation import plots
    from dual_encoder.evaluation.embedders import load_rgb

    output_dir = Path(args.output_dir or "outputs/search")
    images = [embedder.prep(load_rgb(path)) for path, _ in matches]
    labels = [os.path.relpath(path, root) for path, _ in matches]
    grid = plots.save_search_grid(images, [s for _, s in matches], labels, output_dir / "search_results.png", args.query)
    (output_dir / "search_results.json").write_text(json.dumps(
        {"query": args.query, "images": str(Path(root).resolve()), "index": args.index, "indexed": indexed,
         "skipped": skipped, "model": embedder.describe(),
         "matches": [{"path": p, "score": s} for p, s in matches]}, indent=2, default=str))  # fmt: skip
    for path, score in matches:
        print(f"{score:.4f}  {path}")
    print(f"({indexed} images indexed, {sum(skipped.values())} unreadable skipped; grid: {grid})")
    return grid


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["search"]:
            args = build_search_parser().parse_args(argv[1:])
            flags.check_flags(args, FLAG_BOUNDS)
            run_search(args)
            return 0
        if argv[:1] == ["index"]:
            args = build_index_parser().parse_args(argv[1:])
            flags.check_flags(args, FLAG_BOUNDS)
            run_index(args)
            return 0
        if argv[:1] and argv[0] in SUBCOMMAND_MODULES:  # each module: build_parser() and run(args)
            command = importlib.import_module(SUBCOMMAND_MODULES[argv[0]])
            args = command.build_parser().parse_args(argv[1:])
            flags.check_flags(args, FLAG_BOUNDS)
            command.run(args)
            return 0
        args = build_parser().parse_args(argv)
        flags.check_flags(args, FLAG_BOUNDS)
        source_given = any(getattr(args, flag, None) for flag in RETRIEVAL.values())
        labelled_csv = args.label_column and args.dataset in (None, "csv")
        if args.dataset in ("animals10", "folder") or (args.dataset or "").startswith("tfds:") or labelled_csv:
            args.dataset = args.dataset or "csv"
            path = run_zero_shot(args, argv)
        elif args.dataset in RETRIEVAL or (args.dataset is None and source_given):
            path = run_retrieval(args, argv)
        else:
            raise InvalidArgumentError(
                f"--dataset {args.dataset!r} is not known; zero-shot: {', '.join(CLASSIFICATION)}; retrieval: "
                f"{', '.join(RETRIEVAL)}" if args.dataset else "say what to evaluate: --dataset NAME or a caption "
                "source flag (--coco-dir, --csv, --jsonl, --tfds, --sample, --shards); see --help"
            )
        print(f"report: {path}")
        return 0
    except (DualEncoderError, OSError) as error:  # bad input or an unusable file: one line; a bug keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

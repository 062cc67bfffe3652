"""`python evaluate.py benchmark --model M [--data-root ../shared/data]`: every set found, one table.

  python evaluate.py benchmark --model runs/lit-small
  python evaluate.py benchmark --model runs/lit-small --data-root DIR --sets coco_mini_val2017 animals10_proxy

The logic lives in dual_encoder.evaluation.benchmark (finding the sets, running them, the
CLIP_benchmark layout, the table); this module parses the flags and writes <set>/report.json,
results.jsonl and the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dual_encoder import files
from dual_encoder.cli.evaluate import _embedder_and_cache, _write_report, add_model_arguments
from dual_encoder.cli.help import HelpFormatter

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = REPOSITORY.parent / "shared" / "data"  # ../shared/data beside the repository
RESULTS_FILE = "results.jsonl"


def build_parser() -> argparse.ArgumentParser:
    from dual_encoder.evaluation import benchmark

    parser = argparse.ArgumentParser(
        prog="evaluate.py benchmark",
        description="Evaluate one model on every retrieval and zero-shot set found under --data-root: coco_mini val2017 "
        "retrieval, the held-out split of flickr8k shards, animals10_proxy zero-shot and fashion_small articleType "
        "zero-shot on the held-out split of its shards. Absent sets are skipped with a note saying how to provide them. "
        "Prints one table and writes <set>/report.json and results.jsonl (one line per result in CLIP_benchmark's "
        "layout: dataset, model, pretrained, task, metrics, language) into --output-dir.",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser, f"where <set>/report.json and {RESULTS_FILE} go (default: outputs/benchmark-<model name>)")
    sets = parser.add_argument_group("the sets")
    sets.add_argument("--data-root", metavar="DIR", default=str(DEFAULT_DATA_ROOT),
                      help="folder holding coco_mini/, flickr8k/, animals10_proxy/, fashion_small/ (default: ../shared/data "
                      "beside the repository, here %(default)s)")
    sets.add_argument("--flickr8k-shards", metavar="DIR", default=benchmark.FLICKR8K_SHARDS,
                      help="shards python -m dual_encoder.data wrote from flickr8k/captions.txt; retrieval on their held-out "
                      f"'{benchmark.HELD_OUT_SPLIT}' split (default: %(default)s; skipped when absent)")
    sets.add_argument("--fashion-shards", metavar="DIR", default=benchmark.FASHION_SHARDS,
                      help="shards written from fashion_small/styles.csv; zero-shot articleType on their held-out "
                      f"'{benchmark.HELD_OUT_SPLIT}' images (default: %(default)s; skipped when absent)")
    sets.add_argument("--sets", nargs="+", metavar="NAME", choices=benchmark.SET_NAMES,
                      help=f"run only these sets ({', '.join(benchmark.SET_NAMES)}; default: every set found)")
    sets.add_argument("--templates", metavar="SET_OR_FILE", default="auto",
                      help="zero-shot prompt templates, as evaluate.py --templates: 'auto' (each set's own: animals for "
                      "animals10_proxy, 'a photo of a {}.' otherwise), a set name, a file or one template with {}")
    sets.add_argument("--skip-damaged-shards", action="store_true",
                      help="leave out shards that fail their record checksums (otherwise a damaged shard stops the run, "
                      "naming it)")
    return parser


def run(args) -> Path:
    from dual_encoder.evaluation import benchmark

    config = benchmark.BenchmarkConfig(args.data_root, args.flickr8k_shards, args.fashion_shards, args.templates,
                                       args.sets, args.skip_damaged_shards)
    found, notes = benchmark.find_sets(config)  # a wrong root fails before the model loads
    output_dir = Path(args.output_dir or f"outputs/benchmark-{benchmark.model_name(args.model)}")
    for name, why in notes.items():
        print(f"skipped {name}: {why}")
    embedder, cache = _embedder_and_cache(args)
    results = []
    for benchmark_set in found:
        result = benchmark.run_set(embedder, benchmark_set, cache, config.templates)
        _write_report(result.report, output_dir / result.name, _command(args))
        results.append(result)
    lines = [json.dumps(benchmark.clip_benchmark_record(r, args.model), allow_nan=False) for r in results]
    files.write_atomic(output_dir / RESULTS_FILE, "".join(line + "\n" for line in lines))
    print(benchmark.format_table(results))
    print(f"reports: {output_dir}/<set>/report.json; CLIP_benchmark-style results: {output_dir / RESULTS_FILE}")
    return output_dir


def _command(args) -> list[str]:
    """The flags as resolved (defaults included), so report.json says exactly what ran."""
    command = ["benchmark"]
    for dest, value in vars(args).items():
        flag = "--" + dest.replace("_", "-")
        if value is True:
            command.append(flag)
        elif value not in (None, False):
            command += [flag, *map(str, value if isinstance(value, list) else [value])]
    return command

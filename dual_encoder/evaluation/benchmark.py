"""The benchmark: one model on every retrieval and zero-shot set found under a data root.

The sets are the real ones `../shared/data` holds, found by their usual folder names; each runs
through the same calls as `evaluate.py` (`runs.retrieval_run`, `runs.zero_shot`), so a benchmark
figure equals the one a single evaluation prints. Sets that need a held-out split of shards the
user writes (flickr8k, fashion) are found where those shards are. A set that is absent is skipped
with a note saying how to provide it; only a root without any set is an error.

Every result can also be written as one line in CLIP_benchmark's result layout (`dataset`,
`model`, `pretrained`, `task`, `metrics`, `language`) with its metric names
(`image_retrieval_recall@K` is text->image, `text_retrieval_recall@K` image->text; `acc1`, `acc5`,
`mean_per_class_recall`), so our rows merge with theirs.

    results, notes = run_benchmark(embedder, BenchmarkConfig("../shared/data"), cache)
    print(format_table(results))
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from dual_encoder.data.coco import coco_records
from dual_encoder.data.records import SkipCounter
from dual_encoder.errors import InvalidArgumentError
from dual_encoder.evaluation import datasets, runs
from dual_encoder.evaluation.datasets import DataLayoutError

RETRIEVAL = "zeroshot_retrieval"  # CLIP_benchmark's task names
CLASSIFICATION = "zeroshot_classification"
RECALL_AT = (1, 5, 10)
HELD_OUT_SPLIT = "val"  # the split python -m dual_encoder.data holds out by image
# The shared copy's file that covers every photo in val2017/ comes first: its captions_val2017.json lists 79 of the 159.
COCO_CAPTIONS = ("captions_val2017_all159.json", "captions_val2017.json")
FLICKR8K_SHARDS = "tfrecords/flickr8k"
FASHION_SHARDS = "tfrecords/fashion_small"


class BenchmarkError(DataLayoutError):
    """No set found under the data root, or a set name that does not exist."""


@dataclasses.dataclass
class BenchmarkConfig:
    """Where the sets are and how zero-shot prompts are chosen.

    Args:
        data_root: the folder holding coco_mini/, flickr8k/, animals10_proxy/ and fashion_small/ (as ../shared/data).
        flickr8k_shards: shards `python -m dual_encoder.data` wrote from flickr8k/captions.txt; their held-out
            `val` images are the retrieval set (the training images are in their `train` split).
        fashion_shards: shards written from fashion_small/styles.csv; zero-shot articleType on their `val` images.
        templates: prompt templates of the zero-shot sets, as `evaluate.py --templates` ('auto': each set's own).
        sets: the set names to run (default: every set found).
        skip_damaged_shards: leave out shards failing their checksums instead of stopping.

    Example:
        >>> config = BenchmarkConfig("../shared/data", sets=["animals10_proxy"])
    """

    data_root: Union[str, os.PathLike]
    flickr8k_shards: Union[str, os.PathLike] = FLICKR8K_SHARDS
    fashion_shards: Union[str, os.PathLike] = FASHION_SHARDS
    templates: str = "auto"
    sets: Optional[Sequence[str]] = None
    skip_damaged_shards: bool = False


@dataclasses.dataclass
class BenchmarkSet:
    """A set found under the data root; `load` reads it only when it runs.

    `load` returns (records, source_info) for retrieval and `LabeledImages` for classification;
    `dataset` is the name zero-shot picks its 'auto' templates by (e.g. 'animals10').
    """

    name: str
    task: str
    load: Callable[[], object]
    dataset: Optional[str] = None


@dataclasses.dataclass
class SetResult:
    """One set's report (as report.json holds it) and the seconds it took, loading included."""

    name: str
    task: str
    report: dict
    seconds: float

    @property
    def images(self) -> int:
        return int(self.report["num_images"] if self.task == RETRIEVAL else self.report["num_examples"])

    def metrics(self) -> dict:
        """The figures under CLIP_benchmark's names; acc5 is None below 5 classes (they write NaN: 1.0 by definition)."""
        report = self.report
        if self.task == RETRIEVAL:
            return {**{f"image_retrieval_recall@{k}": report["text_to_image"][f"R@{k}"] for k in RECALL_AT},
                    **{f"text_retrieval_recall@{k}": report["image_to_text"][f"R@{k}"] for k in RECALL_AT}}
        top5 = report["top5_accuracy"] if len(report["class_names"]) >= 5 else None
        return {"acc1": report["accuracy"], "acc5": top5, "mean_per_class_recall": report["mean_per_class_recall"]}


def model_name(model: Union[str, os.PathLike]) -> str:
    """A short name for a --model value: 'runs/lit-small' and 'runs/lit-small/saved_model' -> 'lit-small'."""
    path = Path(str(model).rstrip("/\\"))
    if path.name == "saved_model" and path.parent.name:
        path = path.parent
    return path.name or str(model)


def clip_benchmark_record(result: SetResult, model: Union[str, os.PathLike]) -> dict:
    """One result in the layout CLIP_benchmark's `eval` writes (its `build` command merges such files)."""
    return {"dataset": result.name, "model": model_name(model), "pretrained": str(model), "task": result.task,
            "metrics": result.metrics(), "language": "en"}


# --- finding the sets -----------------------------------------------------------------------


def _shards_present(folder) -> bool:
    from dual_encoder.data.tfrecords import MANIFEST

    return os.path.isfile(os.path.join(str(folder), MANIFEST))


def _coco(config: BenchmarkConfig) -> Union[BenchmarkSet, str]:
    root = Path(config.data_root) / "coco_mini"
    found = [root / "annotations" / name for name in COCO_CAPTIONS if (root / "annotations" / name).is_file()]
    if not found or not (root / "val2017").is_dir():
        return f"no {root / 'annotations' / COCO_CAPTIONS[-1]} with images in {root / 'val2017'}/"
    captions = found[0]

    def load():
        skipped = SkipCounter()
        records = coco_records(str(root), "val2017", str(captions), skipped=skipped)
        info = {"type": "coco", "coco_dir": str(root.resolve()), "split": "val2017",
                "captions_json": str(captions.resolve()), "skipped_by_source": skipped.as_dict()}  # fmt: skip
        return records, info

    return BenchmarkSet("coco_mini_val2017", RETRIEVAL, load)


def _flickr8k(config: BenchmarkConfig) -> Union[BenchmarkSet, str]:
    shards = config.flickr8k_shards
    if not _shards_present(shards):
        captions = Path(config.data_root) / "flickr8k" / "captions.txt"
        return (f"no shards at {shards}; write them with: python -m dual_encoder.data --csv {captions} --image-column "
                f"image --caption-column caption --image-template 'Images/{{}}' --out {shards}")
    return BenchmarkSet("flickr8k_heldout", RETRIEVAL,
                        lambda: runs.shard_records([str(shards)], HELD_OUT_SPLIT, config.skip_damaged_shards))


def _animals(config: BenchmarkConfig) -> Union[BenchmarkSet, str]:
    root = Path(config.data_root) / "animals10_proxy"
    if not root.is_dir():
        return f"no {root}/ ({datasets.ANIMALS10_SUBDIR}/<Italian class>/<image>)"
    return BenchmarkSet("animals10_proxy", CLASSIFICATION, lambda: datasets.load_animals10(root), dataset="animals10")


def _fashion(config: BenchmarkConfig) -> Union[BenchmarkSet, str]:
    styles, shards = Path(config.data_root) / "fashion_small" / "styles.csv", config.fashion_shards
    if not styles.is_file():
        return f"no {styles}"
    if not _shards_present(shards):
        return (f"no shards at {shards} to take the held-out images from; write them with: python -m dual_encoder.data "
                f"--csv {styles} --image-column id --image-template 'images/{{}}.jpg' --caption-column "
                f"productDisplayName --max-side 400 --out {shards}")

    def load():
        held_out = runs.shard_image_ids([str(shards)], HELD_OUT_SPLIT, config.skip_damaged_shards)
        data = datasets.load_csv_classification(styles, "id", "articleType", "images/{}.jpg", held_out)
        data.info["restricted_to"] = {"shards": [str(shards)], "split": HELD_OUT_SPLIT}
        return data

    return BenchmarkSet("fashion_small_articletype", CLASSIFICATION, load, dataset="fashion_articletype")


FINDERS = {"coco_mini_val2017": _coco, "flickr8k_heldout": _flickr8k, "animals10_proxy": _animals,
           "fashion_small_articletype": _fashion}  # fmt: skip
SET_NAMES = tuple(FINDERS)


def find_sets(config: BenchmarkConfig) -> tuple[list[BenchmarkSet], dict[str, str]]:
    """(the sets found, {name: why skipped} for the others); a root with no set at all is an error."""
    root = Path(config.data_root)
    if not root.is_dir():
        raise BenchmarkError(f"--data-root {root}: no such folder (it should hold coco_mini/, flickr8k/, "
                             "animals10_proxy/, fashion_small/, as ../shared/data does)")
    unknown = sorted(set(config.sets or ()) - set(FINDERS))
    if unknown:
        raise InvalidArgumentError(f"unknown benchmark set {', '.join(unknown)}; choose from {', '.join(FINDERS)}")
    found, notes = [], {}
    for name, finder in FINDERS.items():
        if config.sets and name not in config.sets:
            continue
        outcome = finder(config)
        if isinstance(outcome, BenchmarkSet):
            found.append(outcome)
        else:
            notes[name] = outcome
    if not found:
        why = "; ".join(f"{name}: {problem}" for name, problem in notes.items())
        raise BenchmarkError(f"no benchmark set found under {root.resolve()}: {why}")
    return found, notes


# --- running them ---------------------------------------------------------------------------


def run_set(embedder, benchmark_set: BenchmarkSet, cache=None, templates: str = "auto") -> SetResult:
    """Loads one set and evaluates it with the same library calls evaluate.py makes."""
    started = time.perf_counter()
    data = benchmark_set.load()
    if benchmark_set.task == RETRIEVAL:
        records, info = data
        report, _ = runs.retrieval_run(embedder, records, info, cache)
    else:
        report = runs.zero_shot(embedder, data, templates, benchmark_set.dataset, cache)
    report["benchmark_set"] = benchmark_set.name
    return SetResult(benchmark_set.name, benchmark_set.task, report, time.perf_counter() - started)


def run_benchmark(
    embedder, config: BenchmarkConfig, cache=None, on_result: Optional[Callable[[SetResult], None]] = None
) -> tuple[list[SetResult], dict[str, str]]:
    """(results, {name: why skipped}) for every set found; `on_result` sees each result as it is done."""
    found, notes = find_sets(config)
    results = []
    for benchmark_set in found:
        results.append(run_set(embedder, benchmark_set, cache, config.templates))
        if on_result is not None:
            on_result(results[-1])
    return results, notes


def _shown(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _summary(result: SetResult) -> str:
    m = result.metrics()
    if result.task == RETRIEVAL:
        return (f"text->image R@1 {_shown(m['image_retrieval_recall@1'])} R@5 {_shown(m['image_retrieval_recall@5'])}  "
                f"image->text R@1 {_shown(m['text_retrieval_recall@1'])} R@5 {_shown(m['text_retrieval_recall@5'])}")
    classes = len(result.report["class_names"])
    return (f"acc1 {_shown(m['acc1'])} acc5 {_shown(m['acc5'])} mean per-class recall "
            f"{_shown(m['mean_per_class_recall'])} ({classes} classes)")


def format_table(results: Sequence[SetResult]) -> str:
    """One line per set: name, task, images, seconds and the main figures."""
    width = max([len("set")] + [len(r.name) for r in results])
    lines = [f"{'set':<{width}}  {'task':<23}  {'images':>6}  {'seconds':>7}  main metrics"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.task:<23}  {r.images:>6}  {r.seconds:>7.1f}  {_summary(r)}")
    return "\n".join(lines)

"""Labelled image sets for zero-shot classification: class-per-folder, Animals-10, TFDS, CSV labels.

Each loader returns `LabeledImages` (image paths or encoded bytes, integer labels, readable
class names). Images are not decoded here: the embedder reads them batch by batch and counts
unreadable ones. A missing or wrongly laid-out folder and an empty class folder are errors whose
message shows the layout that was expected.

Animals-10 (Kaggle) names its folders in Italian. The `translate.py` dictionary that circulates
with the dataset is wrong (it mixes both directions and misses classes), so the mapping below is
our own and is tested against the folder list.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from dual_encoder.data.records import is_utf8
from dual_encoder.errors import DualEncoderError, InvalidArgumentError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

ANIMALS10_CLASSES = {  # Italian folder -> English class name
    "cane": "dog",
    "cavallo": "horse",
    "elefante": "elephant",
    "farfalla": "butterfly",
    "gallina": "chicken",
    "gatto": "cat",
    "mucca": "cow",
    "pecora": "sheep",
    "ragno": "spider",
    "scoiattolo": "squirrel",
}
ANIMALS10_SUBDIR = "raw-img"

FOLDER_LAYOUT = """\
  DIR/
    <class name>/        one folder per class; the folder name is the class name
      <image>.jpg        images (.jpg .jpeg .png .bmp .gif .webp .tif), sub-folders allowed
"""
ANIMALS10_LAYOUT = f"""\
  DIR/                   the Kaggle "Animals-10" download (DIR/{ANIMALS10_SUBDIR}/ or {ANIMALS10_SUBDIR}/ itself)
    {ANIMALS10_SUBDIR}/
      {"/ ".join(ANIMALS10_CLASSES)}/
        <image>.jpeg
"""


class DataLayoutError(DualEncoderError, ValueError):
    """The data folder is missing or not laid out as expected; the message shows the layout."""


@dataclasses.dataclass
class LabeledImages:
    """Images with class labels. `sources[i]` is a path or encoded image bytes."""

    class_names: list[str]
    sources: list[Union[str, bytes]]
    labels: np.ndarray
    ids: list[str]  # stable per image (path, or dataset/version/split/index): names and cache keys
    info: dict  # what was loaded, for the report

    def __len__(self) -> int:
        return len(self.sources)


def readable_class_name(name: str) -> str:
    """'golden_retriever' -> 'golden retriever': prompts read better without underscores."""
    return " ".join(name.replace("_", " ").split())


def _layout_error(problem: str, layout: str) -> DataLayoutError:
    return DataLayoutError(f"{problem}\nExpected layout:\n{layout}")


def images_in(folder: Union[str, Path], skipped=None) -> list[Path]:
    """Image files in `folder` and below, sorted. Symlinked sub-folders are followed (each real
    folder once, so a link loop ends); hidden files and folders (.DS_Store, .git) are left out.

    A name that is not valid UTF-8 on disk cannot reach TensorFlow's file layer (it raises a
    TypeError deep inside), so such files and sub-folders are left out and named in a warning,
    and counted as `non_utf8_name` in `skipped` (a SkipCounter) when one is given; a sub-folder
    that cannot be listed is warned about too, never dropped without a word.
    """
    found, visited = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True, onerror=_warn_unlisted):
        real = os.path.realpath(root)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = _utf8_names(root, [d for d in dirs if not d.startswith(".")], "sub-folders", skipped)
        files = [f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        found += [Path(root) / f for f in _utf8_names(root, files, "images", skipped)]
    return sorted(p for p in found if p.is_file())


def _utf8_names(root: str, names: list[str], what: str, skipped) -> list[str]:
    """`names` in `root` without those whose path is not valid UTF-8 (Python keeps such bytes as lone surrogates)."""
    bad = [n for n in names if not is_utf8(os.path.join(root, n))]
    if bad:
        logger.warning("%r: %d %s whose name is not valid UTF-8 left out (rename them to use them): %s",
                       root, len(bad), what, ", ".join(repr(n) for n in bad))
        if skipped is not None:
            skipped.skip("non_utf8_name", count=len(bad))
    return [n for n in names if n not in bad]


def _warn_unlisted(error: OSError) -> None:
    logger.warning("%r: cannot list this folder, its images are left out (%s)", error.filename, error.strerror or error)


def load_class_folders(
    root, class_map: Optional[dict[str, str]] = None, layout: str = FOLDER_LAYOUT, kind: str = "folder"
) -> LabeledImages:
    """One class per sub-folder of `root`; `class_map` renames folders to class names."""
    root = Path(root)
    if not root.is_dir():
        raise _layout_error(f"no data folder at {root}", layout)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise _layout_error(f"{root} has no class sub-folders", layout)
    sources, labels, counts = [], [], {}
    class_names = [readable_class_name((class_map or {}).get(f.name, f.name)) for f in folders]
    for label, (folder, name) in enumerate(zip(folders, class_names)):
        images = images_in(folder)
        if not images:
            raise _layout_error(f"class folder {folder} contains no images", layout)
        sources.extend(str(p) for p in images)
        labels.extend([label] * len(images))
        counts[name] = len(images)
    info = {"type": kind, "root": str(root.resolve()), "num_images": len(sources), "images_per_class": counts}
    return LabeledImages(class_names, sources, np.asarray(labels, dtype=np.int64), list(sources), info)


def load_animals10(root) -> LabeledImages:
    """Animals-10 with English class names; folders may be named in Italian or English."""
    root = Path(root)
    base = root / ANIMALS10_SUBDIR if (root / ANIMALS10_SUBDIR).is_dir() else root
    if not base.is_dir():
        raise _layout_error(f"no Animals-10 folder at {root}", ANIMALS10_LAYOUT)
    known = set(ANIMALS10_CLASSES) | set(ANIMALS10_CLASSES.values())
    folders = {p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")}
    unknown = sorted(folders - known)
    if unknown or not folders:
        problem = f"unexpected folders {unknown} in {base}" if unknown else f"no class folders in {base}"
        raise _layout_error(problem, ANIMALS10_LAYOUT)
    data = load_class_folders(base, ANIMALS10_CLASSES, ANIMALS10_LAYOUT, kind="animals10")
    missing = sorted(set(ANIMALS10_CLASSES.values()) - set(data.class_names))
    data.info["missing_classes"] = missing  # a partial copy still evaluates; the report says so
    return data


def load_tfds_classification(name: str, split: str = "test", data_dir: Optional[str] = None) -> LabeledImages:
    """A TFDS image-classification set; class names come from its ClassLabel metadata.

    Never downloads: the dataset must be prepared in `data_dir` (or the default TFDS folder).
    """
    import tensorflow_datasets as tfds  # slow to import; only this loader needs it

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise DataLayoutError(f"no TensorFlow Datasets dataset named {name!r} ({str(error).splitlines()[0]})") from None
    features = builder.info.features
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    label_feature = features[label_key] if label_key in features else None
    if image_key not in features or not isinstance(label_feature, tfds.features.ClassLabel):
        raise DataLayoutError(f"TFDS dataset {name!r} is not an image-classification set (features: {', '.join(features)})")
    try:
        dataset = tfds.load(
            name, split=split, data_dir=data_dir, download=False, decoders={image_key: tfds.decode.SkipDecoding()}
        )
    except Exception as error:  # not prepared, unknown split: both need the user to act
        raise DataLayoutError(
            f"cannot read TFDS dataset {name!r} split {split!r} from {builder.data_dir} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Prepare it once where there is "
            f"internet (`tfds build {name} --data_dir DIR`) and pass --data-dir DIR."
        ) from None
    sources, labels = [], []
    for example in tfds.as_numpy(dataset):
        sources.append(bytes(example[image_key]))
        labels.append(int(example[label_key]))
    version = f"tfds:{name}/{builder.info.version}/{split}"
    class_names = [readable_class_name(n) for n in label_feature.names]
    info = {"type": "tfds", "name": name, "version": str(builder.info.version), "split": split,
            "data_dir": data_dir, "num_images": len(sources)}  # fmt: skip
    ids = [f"{version}/{i}" for i in range(len(sources))]
    return LabeledImages(class_names, sources, np.asarray(labels, dtype=np.int64), ids, info)


def load_csv_classification(
    path, image_column: str, label_column: str, image_template: Optional[str] = None, only_ids=None
) -> LabeledImages:
    """Labels from a CSV column, e.g. Fashion Product Images' styles.csv `articleType`.

    Rows are read as the CSV caption source reads them (`data.tabular.csv_records`, with the
    label as the caption): the same image paths (`image_template`), merging and skip counts. An
    image whose rows give it two different labels is dropped and counted `conflicting_labels`.
    `only_ids` (image column values, e.g. the ids of a held-out shard split) keeps those images
    only; ids the CSV lacks are counted in `info["ids_not_in_csv"]`.
    """
    from dual_encoder.data.records import SkipCounter
    from dual_encoder.data.tabular import csv_records  # imports TensorFlow; only this loader needs it

    skipped = SkipCounter()
    records = csv_records(str(path), image_column, label_column, image_template, skipped=skipped)
    wanted = None if only_ids is None else {str(i) for i in only_ids}
    if wanted is not None:
        records = [r for r in records if r.image_id in wanted]
    labelled = []
    for r in records:
        if len(set(r.captions)) > 1:
            skipped.skip("conflicting_labels", f"{r.image_id}: {r.captions}")
        else:
            labelled.append(r)
    if not labelled:
        raise DataLayoutError(f"{path}: no image with a {label_column!r} label" + (" among the ids asked for" if wanted else ""))
    class_names = sorted({r.captions[0] for r in labelled})
    labels = np.asarray([class_names.index(r.captions[0]) for r in labelled], dtype=np.int64)
    sources = [r.path for r in labelled]
    info = {"type": "csv", "path": str(Path(path).resolve()), "image_column": image_column, "label_column": label_column,
            "image_template": image_template, "num_images": len(sources), "skipped_by_source": skipped.as_dict(),
            "images_per_class": {name: int(n) for name, n in zip(class_names, np.bincount(labels, minlength=len(class_names)))},
            "only_ids": None if wanted is None else len(wanted),
            "ids_not_in_csv": None if wanted is None else len(wanted - {r.image_id for r in records})}  # fmt: skip
    return LabeledImages([readable_class_name(n) for n in class_names], sources, labels, list(sources), info)


def keep_top_classes(data: LabeledImages, count: int) -> LabeledImages:
    """The `count` classes with the most images (ties by name) and only their images.

    For long-tailed label columns where most classes have one or two images to evaluate on;
    `info["top_classes"]` records what was dropped.
    """
    if count < 1:
        raise InvalidArgumentError(f"the number of classes to keep must be at least 1, got {count}")
    sizes = np.bincount(data.labels, minlength=len(data.class_names))
    kept = sorted(sorted(range(len(sizes)), key=lambda c: (-sizes[c], data.class_names[c]))[:count])
    rows = np.flatnonzero(np.isin(data.labels, kept))
    relabel = {old: new for new, old in enumerate(kept)}
    info = {**data.info, "num_images": len(rows), "images_per_class": {data.class_names[c]: int(sizes[c]) for c in kept},
            "top_classes": {"kept": len(kept), "classes_dropped": len(sizes) - len(kept),
                            "images_dropped": int(len(data) - len(rows))}}  # fmt: skip
    return LabeledImages(
        [data.class_names[c] for c in kept], [data.sources[i] for i in rows],
        np.asarray([relabel[int(data.labels[i])] for i in rows], dtype=np.int64), [data.ids[i] for i in rows], info,
    )


CLASSIFICATION_DATASETS = ("animals10", "folder", "tfds:NAME")


def load_classification_dataset(dataset: str, data_dir=None, split: Optional[str] = None) -> LabeledImages:
    """Dispatches on the `--dataset` value: animals10, folder, or tfds:NAME."""
    if dataset.startswith("tfds:"):
        return load_tfds_classification(dataset[len("tfds:") :], split or "test", data_dir)
    if data_dir is None:
        raise DataLayoutError(f"--dataset {dataset} needs --data-dir DIR")
    if dataset == "animals10":
        return load_animals10(data_dir)
    if dataset == "folder":
        return load_class_folders(data_dir)
    raise DataLayoutError(f"unknown classification dataset {dataset!r}; choose one of {', '.join(CLASSIFICATION_DATASETS)}")

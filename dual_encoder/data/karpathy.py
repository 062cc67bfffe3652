"""Karpathy split files: `dataset_coco.json`, `dataset_flickr30k.json`, `dataset_flickr8k.json`.

These are the splits papers and CLIP_benchmark report COCO 5k/1k, Flickr30k and Flickr8k
retrieval on, so evaluating on them makes our numbers comparable with theirs. One file lists every
image of the dataset, each with its `split` (`train`, `val`, `test`; COCO also `restval`, the
val2014 images Karpathy moved to training) and its captions (`sentences[].raw`); the other keys
(`tokens`, `imgid`, `sentids`, `cocoid`) are not needed. The image is
`image_root/filepath/filename` when the entry has a `filepath` (COCO: `val2014`, `train2014`),
else `image_root/filename` (Flickr). Its id is that path relative to `image_root`, so a Flickr
image has the id the captions.txt (CSV) source gives it.

The file is data, not trusted paths: a `filepath`/`filename` that is absolute or climbs out with
`..` is never opened (`outside_image_dir`). An entry without a usable `split` or `filename` is a
`malformed_row`; a sentence without text `raw` a `malformed_caption`; images the folder lacks are
`missing_file` (their captions `missing_file_captions`). Each is counted and named in a warning.
A file that is not JSON, lacks the `images` list, has no image in the split asked for, or whose
entries all lack a key is an error naming the file and what is wrong.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import posixpath

import tensorflow as tf

from dual_encoder.data.collect import RecordBuilder, SourceFormatError, leaves_folder, read_json, require_file, warn_skips
from dual_encoder.data.records import ImageRecord, SkipCounter
from dual_encoder.errors import InvalidArgumentError, PathNotFoundError

logger = logging.getLogger(__name__)

KARPATHY_SPLITS = ("test", "val", "train", "restval")
_NOT_A_SENTENCE = object()  # neither text nor None: RecordBuilder counts it as malformed_caption


def parse_splits(split) -> tuple[str, ...]:
    """'test' -> ('test',); 'train,restval' -> both (COCO's usual 113k training set); anything else is an error."""
    names = tuple(dict.fromkeys(s.strip() for s in str(split or "").split(",") if s.strip()))
    bad = [s for s in names if s not in KARPATHY_SPLITS]
    if not names or bad:
        raise InvalidArgumentError(
            f"--split {split!r} is not a Karpathy split: choose {', '.join(KARPATHY_SPLITS)} "
            "(or several joined by commas, e.g. train,restval)"
        )
    return names


def karpathy_records(path: str, image_root: str, split: str, *, skipped: SkipCounter) -> list[ImageRecord]:
    """One record per image of `split` (e.g. 'test', or 'train,restval') whose file exists under `image_root`."""
    splits = parse_splits(split)
    require_file(path, "Karpathy split file")
    if not tf.io.gfile.isdir(image_root):
        raise PathNotFoundError(f"{image_root}: no such image folder (--image-root: the folder holding val2014/ and "
                                "train2014/ for COCO, or the images themselves for Flickr)")
    reader = _KarpathyReader(path, image_root, splits, skipped)
    for n, entry in enumerate(_load_images(path)):
        reader.add(n, entry)
    return reader.records()


class _KarpathyReader:
    """The `images` list of one split file: entries of the wanted splits checked, counted and collected."""

    def __init__(self, path: str, image_root: str, splits: tuple[str, ...], skipped: SkipCounter) -> None:
        self.where, self.image_root, self.splits, self.skipped = path, image_root, splits, skipped
        self.builder = RecordBuilder(source="karpathy", skipped=skipped)
        self.split_sizes: collections.Counter = collections.Counter()  # every split in the file, for the error
        self.wanted = 0
        self.added = 0
        self.sentences = 0
        self.with_raw = 0
        self.bad: list[str] = []

    def add(self, n: int, entry) -> None:
        split = entry.get("split") if isinstance(entry, dict) else None
        if not isinstance(split, str):
            self._skip("malformed_row", f"images[{n}] has no 'split'")
            return
        self.split_sizes[split] += 1
        if split not in self.splits:
            return  # another split: not asked for, not a skip
        self.wanted += 1
        relative = self._relative_path(n, entry)
        if relative is None:
            return
        sentences = entry.get("sentences", [])
        if not isinstance(sentences, list):
            self._skip("malformed_row", f"images[{n}] ({relative}): 'sentences' is not a list")
            return
        if leaves_folder(relative):
            self._skip("outside_image_dir", f"images[{n}]: {relative!r} is outside {self.image_root}")
            self.skipped.skip("outside_image_dir_captions", count=len(sentences))
            return
        self.added += 1
        self.builder.add(relative, [self._caption(s) for s in sentences], path=os.path.join(self.image_root, relative),
                         where=f"{self.where}: images[{n}] ({relative})")

    def _relative_path(self, n: int, entry: dict):
        """filepath/filename (COCO) or filename (Flickr); None (counted) when the entry has no usable name."""
        name, folder = entry.get("filename"), entry.get("filepath")
        folder = "" if folder is None else folder  # absent or null: the Flickr layout
        if not isinstance(name, str) or not name.strip():
            self._skip("malformed_row", f"images[{n}] has no 'filename'")
            return None
        if not isinstance(folder, str):
            self._skip("malformed_row", f"images[{n}] ({name}): 'filepath' is {json.dumps(folder)[:40]}, not text")
            return None
        return posixpath.join(folder, name) if folder else name

    def _caption(self, sentence):
        """The sentence's `raw` value; a sentence without one (a bare string too) becomes a value the builder
        counts as malformed_caption, so that it is named rather than read as text."""
        self.sentences += 1
        if isinstance(sentence, dict) and "raw" in sentence:
            self.with_raw += 1
            return sentence["raw"]
        return _NOT_A_SENTENCE

    def records(self) -> list[ImageRecord]:
        self._check_whole_file()
        warn_skips(logger, f"{self.where}: entries skipped", self.bad)
        return self.builder.build(where=self.image_root)

    def _check_whole_file(self) -> None:
        """A key no entry has, or a split with no image, means the wrong file or split: an error, not skips."""
        asked = ",".join(self.splits)
        if not self.wanted:
            has = ", ".join(f"{s} {n}" for s, n in sorted(self.split_sizes.items())) or "none (entries need 'split')"
            raise SourceFormatError(f"{self.where}: no image in split {asked!r} (splits in the file: {has})")
        if not self.added:
            raise SourceFormatError(f"{self.where}: none of the {self.wanted} images of split {asked!r} is usable "
                                    f"(needs images[].filename; first problems: {'; '.join(self.bad[:3])})")
        if self.sentences and not self.with_raw:
            raise SourceFormatError(f"{self.where}: no sentence of split {asked!r} has a 'raw' caption "
                                    "(the format is images[].sentences[].raw)")

    def _skip(self, reason: str, problem: str) -> None:
        self.skipped.skip(reason, f"{self.where}: {problem}")
        self.bad.append(f"{problem} ({reason})")


def _load_images(path: str) -> list:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "annotations" in data:
        keys = ", ".join(data) if isinstance(data, dict) else type(data).__name__
        hint = "; a COCO captions file goes to --coco-dir" if isinstance(data, dict) and "annotations" in data else ""
        raise SourceFormatError(f"{path}: not a Karpathy split file (needs an 'images' list of "
                                f"{{filename, split, sentences}}, as in dataset_coco.json; has {keys}){hint}")
    return data["images"]


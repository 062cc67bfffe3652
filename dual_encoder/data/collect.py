"""From caption rows to `ImageRecord`s: the bookkeeping every source shares.

Sources differ only in how they find (image, caption) pairs. Merging the captions of one image,
dropping empty or repeated captions, skipping images without captions or whose file is missing,
and counting each of those is the same for COCO, CSV, JSONL and TFDS, so it lives here once.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Optional, Union

import numpy as np
import tensorflow as tf

from dual_encoder.data.records import ImageRecord, SkipCounter, clean_caption
from dual_encoder.errors import DualEncoderError, PathNotFoundError

logger = logging.getLogger(__name__)


class SourceFormatError(DualEncoderError, ValueError):
    """A caption file that cannot be read as a whole; the message names the file (and line)."""


def warn_skips(log: logging.Logger, what: str, details: list[str], limit: int = 10) -> None:
    """One warning naming the first `limit` skipped items, so thousands of skips stay readable."""
    if not details:
        return
    more = f"; ... and {len(details) - limit} more" if len(details) > limit else ""
    log.warning("%s (%d): %s%s", what, len(details), "; ".join(details[:limit]), more)


def skip_image(skipped: SkipCounter, reason: str, what: str, captions: int) -> None:
    """Counts a skipped image and, as `<reason>_captions`, the captions lost with it."""
    skipped.skip(reason, what)
    skipped.skip(f"{reason}_captions", count=captions)


def require_file(path: str, what: str = "file") -> None:
    """Fails early with the path in the message, instead of deep inside a TensorFlow reader."""
    if not tf.io.gfile.exists(path):
        raise PathNotFoundError(f"{path}: no such {what}")


def is_url(path: str) -> bool:
    return "://" in path


def resolve(base_dir: str, path: str) -> str:
    """Resolves a path from a caption file against that file's folder; absolute paths and URLs stay."""
    if is_url(path) or os.path.isabs(path):
        return path
    return os.path.join(base_dir, path)


class FileIndex:
    """Answers "does this image file exist?" with one directory listing per folder.

    On gs:// a listing is one request where per-image `exists` calls would be thousands.
    """

    def __init__(self) -> None:
        self._listings: dict[str, frozenset] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        if folder not in self._listings:
            try:
                self._listings[folder] = frozenset(tf.io.gfile.listdir(folder or "."))
            except tf.errors.NotFoundError:
                self._listings[folder] = frozenset()
        return name in self._listings[folder]


class RecordBuilder:
    """Collects captions per image id and turns them into records, counting every drop.

    Rows naming the same image id are merged: captions are unioned in the order seen, and an
    exact repeat (after whitespace clean-up) is dropped as `duplicate_caption`. The first row's
    path or image wins. `build()` skips images left with no caption (`no_captions`) and images
    whose file is missing (`missing_file`, their captions as `missing_file_captions`).
    """

    def __init__(self, source: str, skipped: SkipCounter, files: Optional[FileIndex] = None) -> None:
        self.source = source
        self.skipped = skipped
        self.files = files or FileIndex()
        self._records: dict[str, ImageRecord] = {}
        self._seen: dict[str, set[str]] = {}
        self._dropped: dict[str, list[str]] = {"empty_caption": [], "duplicate_caption": []}  # where, for the warnings

    def add(
        self,
        image_id: str,
        captions: Union[str, Iterable, None],
        *,
        path: Optional[str] = None,
        image: Union[bytes, np.ndarray, None] = None,
        where: str = "",
    ) -> None:
        """Adds one row: an image and one caption (a string) or several (a list)."""
        record = self._records.get(image_id)
        if record is None:
            record = self._records[image_id] = ImageRecord(image_id, [], self.source, path=path, image=image)
            self._seen[image_id] = set()
        seen = self._seen[image_id]
        for caption in captions if isinstance(captions, (list, tuple)) else [captions]:
            text = clean_caption(caption)
            reason = "empty_caption" if not text else "duplicate_caption" if text in seen else None
            if reason:
                self.skipped.skip(reason, where or image_id)
                self._dropped[reason].append(where or image_id)
            else:
                seen.add(text)
                record.captions.append(text)

    def build(self, where: str = "") -> list[ImageRecord]:
        """The records to write; `where` (e.g. the caption file) prefixes the skip warnings."""
        records, missing, uncaptioned = [], [], []
        for record in self._records.values():
            if not record.captions:
                self.skipped.skip("no_captions", record.image_id)
                uncaptioned.append(record.image_id)
            elif record.path is not None and not self.files.exists(record.path):
                skip_image(self.skipped, "missing_file", record.path, len(record.captions))
                missing.append(record.path)
            else:
                records.append(record)
        where = where or self.source
        warn_skips(logger, f"{where}: empty captions, skipped", self._dropped["empty_caption"])
        warn_skips(logger, f"{where}: repeated captions of the same image, skipped", self._dropped["duplicate_caption"])
        warn_skips(logger, f"{where}: images with no caption left, skipped", uncaptioned)
        warn_skips(logger, f"{where}: images missing on disk, skipped", missing)
        return records

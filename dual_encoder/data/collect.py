"""From caption rows to `ImageRecord`s: the bookkeeping every source shares.

Sources differ only in how they find (image, caption) pairs. Merging the captions of one image,
dropping empty or repeated captions, skipping images without captions or whose file is missing,
and counting each of those is the same for COCO, CSV, JSONL and TFDS, so it lives here once.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from typing import Iterable, Optional, Union

import numpy as np
import tensorflow as tf

from dual_encoder.data.records import ImageRecord, SkipCounter, clean_caption, is_utf8
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


def read_json(path: str):
    """A caption file's JSON (local, gs://, ...); not JSON is a SourceFormatError naming the file."""
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceFormatError(f"{path}: not valid JSON ({e})") from None


def is_url(path: str) -> bool:
    return "://" in path


def resolve(base_dir: str, path: str) -> str:
    """Resolves a path from a caption file against that file's folder; absolute paths and URLs stay."""
    if is_url(path) or os.path.isabs(path):
        return path
    return os.path.join(base_dir, path)


def leaves_folder(path: str) -> bool:
    """True when `path`, read from a data file, does not stay inside the folder it is resolved
    against: an absolute path, a URL, or `..` components that climb out (`a/../../b`)."""
    normal = posixpath.normpath(path)
    return is_url(path) or os.path.isabs(path) or normal == ".." or normal.startswith("../")


class FileIndex:
    """Answers "does this image file exist?" with one directory listing per folder.

    On gs:// a listing is one request where per-image `exists` calls would be thousands. A folder
    that cannot be listed for another reason than absence (no permission) answers yes, so that
    reading the file names the real problem instead of calling it missing.
    """

    def __init__(self) -> None:
        self._listings: dict[str, Optional[frozenset]] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        if folder not in self._listings:
            self._listings[folder] = _listing(folder or ".")
        listing = self._listings[folder]
        return listing is None or name in listing


def _listing(folder: str) -> Optional[frozenset]:
    """The names in `folder`; empty when it does not exist (or is a file), None when unknown."""
    try:
        return frozenset(tf.io.gfile.listdir(folder))
    except tf.errors.NotFoundError:
        return frozenset()
    except tf.errors.OpError:
        return None


_DROP_WARNINGS = {  # reason -> what the warning calls it
    "empty_caption": "empty captions",
    "duplicate_caption": "repeated captions of the same image",
    "malformed_caption": "captions that are not text (or not valid Unicode)",
    "malformed_row": "rows whose image id or path is not valid Unicode",
}


class RecordBuilder:
    """Collects captions per image id and turns them into records, counting every drop.

    Rows naming the same image id are merged: captions are unioned in the order seen, and an
    exact repeat (after whitespace clean-up) is dropped as `duplicate_caption`. The first row's
    path or image wins. A caption that is not text (a number, a dict) or holds text TensorFlow
    cannot store (lone surrogates) is `malformed_caption`, never stored as "7"; an image id or
    path of such text makes the row `malformed_row`. `build()` skips images left with no caption
    (`no_captions`) and images whose file is missing (`missing_file`, their captions as
    `missing_file_captions`).
    """

    def __init__(self, source: str, skipped: SkipCounter, files: Optional[FileIndex] = None) -> None:
        self.source = source
        self.skipped = skipped
        self.files = files or FileIndex()
        self._records: dict[str, ImageRecord] = {}
        self._seen: dict[str, set[str]] = {}
        self._dropped: dict[str, list[str]] = {reason: [] for reason in _DROP_WARNINGS}  # where, for the warnings

    def add(
        self,
        image_id: str,
        captions: Union[str, Iterable, None],
        *,
        path: Optional[str] = None,
        image: Union[bytes, np.ndarray, None] = None,
        where: str = "",
        outside_source_folder: bool = False,
    ) -> None:
        """Adds one row: an image and one caption (a string) or several (a list)."""
        if not is_utf8(image_id) or (path is not None and not is_utf8(path)):
            self._drop("malformed_row", where or repr(image_id))
            return
        record = self._records.get(image_id)
        if record is None:
            record = ImageRecord(image_id, [], self.source, path=path, image=image, outside_source_folder=outside_source_folder)
            self._records[image_id] = record
            self._seen[image_id] = set()
        for caption in captions if isinstance(captions, (list, tuple)) else [captions]:
            self._add_caption(record, caption, where or image_id)

    def _add_caption(self, record: ImageRecord, caption, where: str) -> None:
        seen = self._seen[record.image_id]
        text = clean_caption(caption) if caption is None or isinstance(caption, str) else None
        if text is None or not is_utf8(text):
            self._drop("malformed_caption", where)
        elif not text or text in seen:
            self._drop("empty_caption" if not text else "duplicate_caption", where)
        else:
            seen.add(text)
            record.captions.append(text)

    def _drop(self, reason: str, where: str) -> None:
        self.skipped.skip(reason, where)
        self._dropped[reason].append(where)

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
        for reason, what in _DROP_WARNINGS.items():
            warn_skips(logger, f"{where}: {what}, skipped", self._dropped[reason])
        warn_skips(logger, f"{where}: images with no caption left, skipped", uncaptioned)
        warn_skips(logger, f"{where}: images missing on disk, skipped", missing)
        return records

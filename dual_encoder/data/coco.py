"""MS-COCO captions in the official layout: `DIR/annotations/captions_<split>.json`, images in `DIR/<split>/`.

Works for 2014 and 2017 names alike (`train2014`, `val2017`, ...), since file names come from the
JSON's `file_name`. Images the JSON lists but the folder lacks are common (partial downloads,
subsets) and are skipped and counted (`missing_file`, their captions `missing_file_captions`),
never silently dropped.

The JSON is data, not a list of trusted paths: a `file_name` that is absolute or climbs out with
`..` is never opened (`outside_image_dir`), so a captions file can only name images inside
`DIR/<split>/`. An image id listed again with another file keeps the first entry
(`duplicate_image_id`); an entry without a usable id or file name, and a caption that is not text
(a number, null, a list), are `malformed_row`. Each is named in a warning.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import tensorflow as tf

from dual_encoder.data.collect import RecordBuilder, SourceFormatError, leaves_folder, read_json, require_file, warn_skips
from dual_encoder.data.records import ImageRecord, SkipCounter, is_utf8
from dual_encoder.errors import PathNotFoundError

logger = logging.getLogger(__name__)


def coco_records(
    coco_dir: str, split: str, captions_json: Optional[str] = None, *, skipped: SkipCounter
) -> list[ImageRecord]:
    """One record per image listed in the captions JSON whose file exists in `coco_dir/split/`."""
    captions_json = captions_json or os.path.join(coco_dir, "annotations", f"captions_{split}.json")
    image_dir = os.path.join(coco_dir, split)
    require_file(captions_json, "COCO captions file")
    if not tf.io.gfile.isdir(image_dir):
        raise PathNotFoundError(f"{image_dir}: no such image folder (COCO layout: DIR/<split>/*.jpg, e.g. DIR/val2017)")
    data = _load_json(captions_json)
    reader = _CocoReader(captions_json, image_dir, skipped)
    for n, image in enumerate(data["images"]):
        reader.add_image(n, image)
    for n, annotation in enumerate(data["annotations"]):
        reader.add_caption(n, annotation)
    return reader.records()


class _CocoReader:
    """The `images` and `annotations` lists of one captions file, each entry checked and counted."""

    def __init__(self, captions_json: str, image_dir: str, skipped: SkipCounter) -> None:
        self.where, self.image_dir, self.skipped = captions_json, image_dir, skipped
        self.builder = RecordBuilder(source="coco", skipped=skipped)
        self.files: dict[str, str] = {}  # image id -> file_name
        self.refused: dict[str, str] = {}  # image id -> why its image is not read, for its captions
        self.bad: list[str] = []
        self.orphans = 0

    def add_image(self, n: int, image) -> None:
        image_id = _image_id(image.get("id")) if isinstance(image, dict) else None
        name = image.get("file_name") if isinstance(image, dict) else None
        if image_id is None or not isinstance(name, str) or not name or not is_utf8(image_id + name):
            self._skip("malformed_row", f"images[{n}] has no usable id or file_name")
        elif leaves_folder(name):
            self.refused.setdefault(image_id, "outside_image_dir")
            self._skip("outside_image_dir", f"images[{n}] (id {image_id}): file_name {name!r} is outside {self.image_dir}")
        elif self.files.get(image_id, name) != name:
            self._skip("duplicate_image_id", f"images[{n}]: id {image_id} is listed again with {name!r}; kept "
                                             f"{self.files[image_id]!r}")
        elif image_id not in self.files:
            self.files[image_id] = name
            self.builder.add(image_id, [], path=os.path.join(self.image_dir, name))

    def add_caption(self, n: int, annotation) -> None:
        image_id = _image_id(annotation.get("image_id")) if isinstance(annotation, dict) else None
        caption = annotation.get("caption") if isinstance(annotation, dict) else None
        if image_id is None:
            self._skip("malformed_row", f"annotations[{n}] has no usable image_id")
        elif image_id not in self.files:
            if image_id in self.refused:
                self.skipped.skip(f"{self.refused[image_id]}_captions")
            else:
                self.orphans += 1
        elif not isinstance(caption, str):
            self._skip("malformed_row", f"annotations[{n}] (image {image_id}): caption is {json.dumps(caption)[:40]}, not text")
        else:
            self.builder.add(image_id, caption, where=f"{self.where}: image {image_id}")

    def records(self) -> list[ImageRecord]:
        if self.orphans:
            self.skipped.skip("orphan_caption", count=self.orphans)
            self.bad.append(f"{self.orphans} captions name no image listed in the file")
        warn_skips(logger, f"{self.where}: entries skipped", self.bad)
        return self.builder.build(where=self.image_dir)

    def _skip(self, reason: str, problem: str) -> None:
        self.skipped.skip(reason, f"{self.where}: {problem}")
        self.bad.append(f"{problem} ({reason})")


def _image_id(value) -> Optional[str]:
    """COCO ids are integers (some exports write strings); anything else (bool, null, a list) is no id."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _load_json(path: str) -> dict:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        keys = ", ".join(data) if isinstance(data, dict) else type(data).__name__
        raise SourceFormatError(f"{path}: not a COCO captions file (needs 'images' and 'annotations' lists; has {keys})")
    return data

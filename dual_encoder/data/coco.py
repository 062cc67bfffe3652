"""MS-COCO captions in the official layout: `DIR/annotations/captions_<split>.json`, images in `DIR/<split>/`.

Works for 2014 and 2017 names alike (`train2014`, `val2017`, ...), since file names come from the
JSON's `file_name`. Images the JSON lists but the folder lacks are common (partial downloads,
subsets) and are skipped and counted (`missing_file`, their captions `missing_file_captions`),
never silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import tensorflow as tf

from dual_encoder.data.collect import RecordBuilder, SourceFormatError, require_file, warn_skips
from dual_encoder.data.records import ImageRecord, SkipCounter
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

    builder = RecordBuilder(source="coco", skipped=skipped)
    known, bad = set(), []
    for n, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            skipped.skip("malformed_row", f"{captions_json}: images[{n}]")
            bad.append(f"images[{n}] has no id or file_name")
            continue
        image_id = str(image["id"])
        known.add(image_id)
        builder.add(image_id, [], path=os.path.join(image_dir, image["file_name"]))
    orphans = 0
    for annotation in data["annotations"]:
        image_id = str(annotation.get("image_id")) if isinstance(annotation, dict) else None
        if image_id not in known:
            orphans += 1
            continue
        builder.add(image_id, annotation.get("caption"), where=f"{captions_json}: image {image_id}")
    if orphans:
        skipped.skip("orphan_caption", count=orphans)
        bad.append(f"{orphans} captions name no image listed in the file")
    warn_skips(logger, f"{captions_json}: entries skipped", bad)
    return builder.build(where=image_dir)


def _load_json(path: str) -> dict:
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        keys = ", ".join(data) if isinstance(data, dict) else type(data).__name__
        raise SourceFormatError(f"{path}: not a COCO captions file (needs 'images' and 'annotations' lists; has {keys})")
    return data

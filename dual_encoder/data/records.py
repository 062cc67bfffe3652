"""The one record every caption source yields, and the counter of what was skipped.

Sources (COCO, CSV/JSONL, TFDS, the built-in sample) differ only in how they find images and
captions; everything after them sees `ImageRecord`s, so the writer has one code path.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Optional, Union

import numpy as np

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ImageRecord:
    """One image and all its captions.

    Exactly one of `path` (a file to read, local or any `tf.io.gfile` URL) and `image`
    (encoded bytes or an HxWxC uint8 array, for generated or TFDS images) is set.
    `outside_source_folder` marks a path a caption file gave as absolute or climbing out with
    `..`: allowed for CSV/JSONL, but counted in the manifest so that the user sees it.
    """

    image_id: str
    captions: list[str]
    source: str
    path: Optional[str] = None
    image: Optional[Union[bytes, np.ndarray]] = None
    outside_source_folder: bool = False


class SkipCounter(collections.Counter):
    """Counts skipped items by reason so that no data is lost silently.

    Reasons used across the project: images: missing_file, not_a_file, unreadable, undecodable,
    unsupported_image, no_captions, outside_image_dir, duplicate_image_id; captions: empty_caption,
    duplicate_caption, malformed_caption, `<image reason>_captions` (lost with a skipped image);
    rows: malformed_row, orphan_caption; folder listings (evaluation): non_utf8_name.
    """

    def skip(self, reason: str, what: str = "", count: int = 1) -> None:
        self[reason] += count
        if what:
            logger.debug("skipped (%s): %s", reason, what)

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.items()) if v}


def is_utf8(text: str) -> bool:
    """False for text holding lone surrogates (a JSON escape such as "\\udc80", a file name
    that was not UTF-8 on disk): TensorFlow and the shards cannot store it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_caption(text) -> str:
    """Collapses whitespace; an empty result means the caption is dropped (and counted)."""
    if text is None:
        return ""
    return " ".join(str(text).split())

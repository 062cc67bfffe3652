"""TensorFlow Datasets as a caption source, made for `coco_captions` (Karpathy splits of COCO 2014).

TFDS downloads and prepares the dataset on first use. Offline that cannot work, so the failure
says what to pass instead (a local COCO copy, or an already prepared TFDS folder) rather than
surfacing a network stack trace. TFDS hands images over decoded; each is JPEG-encoded at once so
that a 5,000-image split holds ~0.8 GB in memory instead of ~4.6 GB of pixel arrays.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from dual_encoder.data.collect import RecordBuilder, skip_image
from dual_encoder.data.images import SkippedImageError, to_rgb_jpeg
from dual_encoder.data.records import ImageRecord, SkipCounter
from dual_encoder.errors import DualEncoderError, InvalidArgumentError

logger = logging.getLogger(__name__)

# Where datasets keep their captions: coco_captions has a sequence of {"text", "id"}.
CAPTION_FEATURES = (("captions", "text"), ("caption",), ("text",))
ID_FEATURES = ("image/id", "image/filename", "id")


class TfdsUnavailableError(DualEncoderError, OSError):
    """The dataset is not prepared locally and could not be downloaded (typically: offline)."""


def tfds_records(
    name: str, split: str, data_dir: Optional[str] = None, *, skipped: SkipCounter, download: bool = True
) -> list[ImageRecord]:
    """One record per example of `name`/`split`; examples sharing an image id are merged."""
    import tensorflow_datasets as tfds  # slow to import; only this source needs it

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise InvalidArgumentError(f"no TensorFlow Datasets dataset named {name!r} ({str(e).splitlines()[0]})") from None
    if not builder.is_prepared():
        if not download:
            raise TfdsUnavailableError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. {_INSTEAD}")
        try:
            builder.download_and_prepare()
        except Exception as e:  # network, quota and checksum failures all mean: use local data instead
            raise TfdsUnavailableError(
                f"could not download TFDS dataset {name!r} into {builder.data_dir} ({type(e).__name__}: {e}). {_INSTEAD}"
            ) from None
    try:
        dataset = builder.as_dataset(split=split)
    except (ValueError, KeyError) as e:
        splits = ", ".join(builder.info.splits) or "unknown"
        raise InvalidArgumentError(f"TFDS dataset {name!r} has no split {split!r} (splits: {splits}; {e})") from None

    features = builder.info.features
    caption_path = next((p for p in CAPTION_FEATURES if _has(features, p)), None)
    if "image" not in features or caption_path is None:
        raise InvalidArgumentError(f"TFDS dataset {name!r} has no 'image' and captions feature (features: {', '.join(features)})")
    id_key = next((k for k in ID_FEATURES if k in features), None)

    builder_records = RecordBuilder(source=f"tfds:{name}", skipped=skipped)
    for n, example in enumerate(tfds.as_numpy(dataset)):
        image_id = _text(example[id_key]) if id_key else f"{split}-{n}"
        captions = _lookup(example, caption_path)
        captions = [_text(c) for c in (captions if np.ndim(captions) else [captions])]
        where = f"{name}/{split} image {image_id}"
        try:
            jpeg, _, _ = to_rgb_jpeg(example["image"], name=where)
        except SkippedImageError as e:
            logger.warning("skipped (%s): %s", e.reason, e)
            skip_image(skipped, e.reason, str(e), len(captions))
            continue
        builder_records.add(image_id, captions, image=jpeg, where=where)
    return builder_records.build(where=f"tfds:{name}/{split}")


_INSTEAD = (
    "Offline? Use a local copy instead: --coco-dir DIR --split val2017 for COCO in its official "
    "layout (DIR/annotations/captions_val2017.json, DIR/val2017/), or --tfds-data-dir DIR pointing "
    "at a folder where this TFDS dataset is already prepared."
)


def _has(features, path) -> bool:
    for key in path:
        if key not in features:
            return False
        features = features[key]
        features = getattr(features, "feature", features)  # a Sequence wraps its dict
    return True


def _lookup(example, path):
    for key in path:
        example = example[key]
    return example


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

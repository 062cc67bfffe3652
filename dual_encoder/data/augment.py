"""Random-resized-crop / flip views of an image, the same for the same seed, image and view.

With frozen towers the feature cache computes each image once, so training would see one view of
each photo in every epoch. `ViewAugmentation` makes K views per image at extraction time (stored
beside the plain features, `training/feature_cache.py`); each epoch then samples one of them per
image, so cached training still gets augmentation, at cached speed.

A view is fixed by (augmentation seed, hashed image id, view number) through stateless random
ops: a rerun, another shard order or another worker makes the same pixels, so a cache can be
rebuilt and checked. `spec()` is what a cache is keyed by: change any field and the views are
computed again.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from dual_encoder.data.pipeline import resize_image
from dual_encoder.errors import InvalidArgumentError

ASPECT_RATIOS = (3 / 4, 4 / 3)  # the crop's width / height, as torchvision's RandomResizedCrop


@dataclasses.dataclass(frozen=True)
class ViewAugmentation:
    """K views per image: a crop of `min_scale`..1 of the area at an aspect ratio in
    ASPECT_RATIOS, resized as the tower resizes, mirrored half of the time when `flip`."""

    views: int = 0  # 0: no augmented views (the plain features only)
    min_scale: float = 0.5
    flip: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.views < 0:
            raise InvalidArgumentError(f"augmented views must be 0 or more, got {self.views}")
        if not 0 < self.min_scale <= 1:
            raise InvalidArgumentError(f"the crops' minimum area must be in (0, 1], got {self.min_scale}")

    def spec(self) -> dict:
        return {"views": self.views, "min_scale": self.min_scale, "flip": self.flip, "seed": self.seed,
                "aspect_ratios": list(ASPECT_RATIOS), "method": "random_resized_crop+flip"}

    def view(self, image, image_hash, index, size, resize: str = "squash"):
        """One view: uint8 [H, W, 3] -> float32 0..255 at `size`; `image_hash` is the int64 hashed
        image id (`pipeline.hash_image_ids`), `index` the view number."""
        seed = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(self.seed, tf.int64), tf.cast(image_hash, tf.int64)]), tf.cast(index, tf.int64))
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([1, 0, 4], tf.float32), seed=crop_seed, min_object_covered=0.0,
            aspect_ratio_range=ASPECT_RATIOS, area_range=(self.min_scale, 1.0), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        view = resize_image(tf.slice(image, begin, extent), size, resize)
        if self.flip:
            view = tf.image.stateless_random_flip_left_right(view, flip_seed)
        return view

    def views_of(self, image, image_hash, size, resize: str = "squash"):
        """All K views of one image: float32 [K, H, W, 3]."""
        return tf.stack([self.view(image, image_hash, k, size, resize) for k in range(self.views)])

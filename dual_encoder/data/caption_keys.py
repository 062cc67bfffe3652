"""Identical captions on different images: keys that let the loss treat them as false negatives.

Two photos both captioned "A dog runs through the grass." are each a right answer for the
other's caption, yet InfoNCE would push them apart as negatives. Each pair therefore carries a
key of its caption, compared after normalising case, runs of white space and trailing
punctuation ("A dog runs through the grass ." and "a dog runs through the grass" are one
caption); the loss masks other pairs with the same key as it masks other captions of the same
image (`model/losses.py`). Flickr8k's 35,455 captions hold a few hundred such repeats.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

TRAILING = r"[\s.!?,;:'\"]+$"  # what a caption may end with without saying anything else


def normalise_captions(captions):
    """String tensor -> the same captions lower-cased, white space collapsed, trailing punctuation dropped."""
    text = tf.strings.lower(captions, encoding="utf-8")
    text = tf.strings.regex_replace(text, r"\s+", " ")
    text = tf.strings.regex_replace(text, TRAILING, "")
    return tf.strings.strip(text)


def caption_keys(captions):
    """String tensor [N] -> int64 [N]: equal for captions equal after `normalise_captions` (collisions ~2^-62)."""
    return tf.strings.to_hash_bucket_fast(normalise_captions(captions), 2**62)


def item_keys(items) -> np.ndarray:
    """int64 [C]: `caption_keys` of every caption of (image id, captions) items, in order."""
    captions = [c for _, caps in items for c in caps]
    return caption_keys(tf.constant(captions, tf.string)).numpy() if captions else np.zeros(0, np.int64)


def duplicate_report(image_keys: np.ndarray, keys: np.ndarray) -> dict:
    """How many captions repeat, word for word after normalising, on a different image.

    `image_keys`: the image of each caption (any hashable ids); `keys`: `caption_keys` of each.
    """
    image_keys, keys = np.asarray(image_keys), np.asarray(keys, np.int64)
    pairs = np.unique(np.stack([keys, np.unique(image_keys, return_inverse=True)[1].astype(np.int64)], axis=1), axis=0)
    distinct, images_per_key = np.unique(pairs[:, 0], return_counts=True) if len(pairs) else (np.zeros(0), np.zeros(0))
    repeated = distinct[images_per_key > 1]
    return {"captions": int(len(keys)), "images": int(len(np.unique(image_keys))),
            "captions_shared_with_another_image": int(np.isin(keys, repeated).sum()),
            "distinct_shared_captions": int(len(repeated)),
            "images_with_a_shared_caption": int(len(np.unique(pairs[np.isin(pairs[:, 0], repeated), 1])))}

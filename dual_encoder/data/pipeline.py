"""Shards -> batches of (image, caption) pairs for training and evaluation, all in tf.data.

Each image yields up to K pairs per epoch (its captions sampled without replacement); the
pairs carry a hashed image id so the loss never treats two captions of one image as
negatives, and a caption key (`caption_keys.py`) so neither two images with the same caption.
Images are decoded after the pair-level shuffle so the shuffle buffer holds small JPEG
strings, not decoded pixels, and captions are tokenized per batch inside the graph.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import tensorflow as tf

from dual_encoder.data import schema
from dual_encoder.data.caption_keys import caption_keys
from dual_encoder.errors import InvalidArgumentError

AUTOTUNE = tf.data.AUTOTUNE
RESIZE_MODES = ("squash", "crop")


def hash_image_ids(image_ids):
    """String ids -> int64 ids for the loss's same-image mask (collisions ~2^-62)."""
    return tf.strings.to_hash_bucket_fast(image_ids, 2**62)


def resize_image(image, size, mode="squash"):
    """uint8/float [H, W, 3] or [B, H, W, 3] -> float32 0..255 at `size` (H, W).

    `squash` resizes to the size directly; `crop` resizes the short side, then centre-crops:
    pretrained towers expect one or the other, so the mode comes from the tower.
    """
    if mode not in RESIZE_MODES:
        raise InvalidArgumentError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")
    image = tf.cast(image, tf.float32)
    height, width = int(size[0]), int(size[1])
    if mode == "crop":
        shape = tf.shape(image)
        h, w = tf.cast(shape[-3], tf.float32), tf.cast(shape[-2], tf.float32)
        ratio = tf.maximum(height / h, width / w)
        new_size = tf.cast(tf.math.ceil(tf.stack([h * ratio, w * ratio])), tf.int32)
        image = _resize_unless_there(image, new_size)
        image = tf.image.resize_with_crop_or_pad(image, height, width)
    else:
        image = _resize_unless_there(image, tf.constant([height, width], tf.int32))
    return tf.clip_by_value(image, 0.0, 255.0)


def _resize_unless_there(image, new_size):
    """Antialiased resize; an image already at `new_size` is returned as it is, which is what the
    resize gives (exactly), at none of its cost (3 ms of a 224 px image's 4 ms decode on CPU)."""
    shape = tf.shape(image)[-3:-1]
    return tf.cond(tf.reduce_all(tf.equal(shape, new_size)), lambda: image,
                   lambda: tf.image.resize(image, new_size, antialias=True))


def decode_image(jpeg, size, mode="squash"):
    return resize_image(tf.io.decode_jpeg(jpeg, channels=3), size, mode)


@dataclasses.dataclass
class PipelineConfig:
    """How shards become batches."""

    batch_size: int = 256
    captions_per_image: int = 3
    shuffle: bool = True
    shuffle_buffer: int = 10_000
    seed: Optional[int] = None
    deterministic: bool = False  # fixed order and caption choice, for tests
    cache: bool = False  # keep parsed records in memory after the first epoch
    drop_remainder: bool = False
    repeat: bool = False
    mask_duplicate_captions: bool = True  # batches carry caption_keys: one caption on two images is no negative


READ_CYCLE = 8  # shards read at once (interleaved); the feature cache reproduces this order


def read_cycle(num_files: int) -> int:
    """How many of `num_files` shards `read_examples` interleaves."""
    return max(1, min(num_files, READ_CYCLE))


def read_examples(files: Sequence[str], config: PipelineConfig) -> tf.data.Dataset:
    """Parsed examples from shards, read in parallel (interleaved)."""
    files = list(files)
    if not files:
        raise InvalidArgumentError("no shard files to read")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if config.shuffle:
        ds = ds.shuffle(len(files), seed=config.seed)
    ds = ds.interleave(
        tf.data.TFRecordDataset, cycle_length=read_cycle(len(files)), num_parallel_calls=AUTOTUNE,
        deterministic=config.deterministic,
    )
    ds = ds.map(schema.parse_example, num_parallel_calls=AUTOTUNE, deterministic=config.deterministic)
    return ds.cache() if config.cache else ds


def _sample_pairs(k: int, shuffle: bool, seed):
    def pairs(example):
        captions = example[schema.CAPTIONS]
        if shuffle:
            captions = tf.random.shuffle(captions, seed=seed)
        captions = captions[:k]
        n = tf.shape(captions)[0]
        return tf.data.Dataset.from_tensor_slices(
            {
                "jpeg": tf.fill([n], example[schema.IMAGE]),
                "caption": captions,
                "image_ids": tf.fill([n], hash_image_ids(example[schema.IMAGE_ID])),
            }
        )

    return pairs


def pair_dataset(
    files: Sequence[str],
    image_size,
    text_preprocessor: Callable,
    config: PipelineConfig,
    resize: str = "squash",
) -> tf.data.Dataset:
    """Batches of {"images", "tokens", "image_ids", "caption_keys"} ready for `DualEncoder.fit`
    (no caption_keys without `config.mask_duplicate_captions`)."""
    ds = read_examples(files, config)
    ds = ds.flat_map(_sample_pairs(config.captions_per_image, config.shuffle and not config.deterministic, config.seed))
    if config.shuffle:
        ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    if config.repeat:
        ds = ds.repeat()

    def decode(pair):
        return {
            "images": decode_image(pair["jpeg"], image_size, resize),
            "caption": pair["caption"],
            "image_ids": pair["image_ids"],
        }

    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=config.deterministic)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)

    def tokenize(batch):
        out = {"images": batch["images"], "tokens": text_preprocessor(batch["caption"]), "image_ids": batch["image_ids"]}
        return {**out, "caption_keys": caption_keys(batch["caption"])} if config.mask_duplicate_captions else out

    ds = ds.map(tokenize, num_parallel_calls=AUTOTUNE, deterministic=config.deterministic)
    return ds.prefetch(AUTOTUNE)


def image_caption_lists(files: Sequence[str], max_images: Optional[int] = None):
    """(image_id, captions) of some shards in order, without decoding images (for vocabularies,
    sequence lengths and retrieval ground truth); `max_images` stops early."""
    config = PipelineConfig(shuffle=False, deterministic=True)
    ds = read_examples(files, config).map(lambda e: (e[schema.IMAGE_ID], e[schema.CAPTIONS]))
    if max_images is not None:
        ds = ds.take(max_images)
    return [(i.decode(), [c.decode() for c in caps]) for i, caps in ds.as_numpy_iterator()]


def image_dataset(files: Sequence[str], image_size, resize: str = "squash", batch_size: int = 64):
    """Batches of (image ids, images) in shard order, one row per image, for embedding."""
    config = PipelineConfig(shuffle=False, deterministic=True)
    ds = read_examples(files, config).map(
        lambda e: (e[schema.IMAGE_ID], decode_image(e[schema.IMAGE], image_size, resize)), num_parallel_calls=AUTOTUNE
    )
    return ds.batch(batch_size).prefetch(AUTOTUNE)

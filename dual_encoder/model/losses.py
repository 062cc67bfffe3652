"""Contrastive losses for image-text pairs, written for one replica's view of a global batch.

Every loss takes this replica's embeddings (rows) and the embeddings of the whole global
batch (columns, gathered across replicas; equal to the local ones on one device), plus the
keys of every pair so that two captions of one image are never pushed apart as negatives: the
image ids [B], or [B, 2] image ids and caption keys (`data/caption_keys.py`), when one caption
written word for word on two images makes each image a right answer for the other's caption.
Row i's positive is column `offset + i`.
"""

from __future__ import annotations

import tensorflow as tf

from dual_encoder.config import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX  # noqa: F401  (CLIP's init and clamp, part of this module's API)
from dual_encoder.errors import InvalidArgumentError

MASKED_LOGIT = -1e9


def positive_mask(ids_local, ids_global, offset):
    """[B_local, B_global] bool: True where the column is the row's own pair."""
    local = tf.shape(ids_local)[0]
    columns = tf.range(tf.shape(ids_global)[0])
    return tf.equal(columns[None, :], (tf.range(local) + offset)[:, None])


def same_key(ids_local, ids_global):
    """[B_local, B_global] bool: the pairs share an image (or, with [B, 2] keys, an image or a caption)."""
    same = tf.equal(ids_local[:, None], ids_global[None, :])
    return same if same.shape.rank == 2 else tf.reduce_any(same, axis=-1)


def same_image_negatives(ids_local, ids_global, offset):
    """[B_local, B_global] bool: another pair of the same image, or of the same caption (a false negative)."""
    return tf.logical_and(same_key(ids_local, ids_global), tf.logical_not(positive_mask(ids_local, ids_global, offset)))


def _masked(logits, mask):
    return tf.where(mask, tf.cast(MASKED_LOGIT, logits.dtype), logits)


def _labels(ids_local, offset):
    return tf.range(tf.shape(ids_local)[0]) + offset


def infonce(image_local, text_local, image_global, text_global, ids_local, ids_global, offset, scale):
    """Symmetric InfoNCE (CLIP): cross-entropy over texts for each image and vice versa.

    Returns (loss, image->text logits, text->image logits), logits already masked.
    """
    mask = same_image_negatives(ids_local, ids_global, offset)
    logits_i2t = _masked(scale * tf.matmul(image_local, text_global, transpose_b=True), mask)
    logits_t2i = _masked(scale * tf.matmul(text_local, image_global, transpose_b=True), mask)
    labels = _labels(ids_local, offset)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits
    loss = 0.5 * (tf.reduce_mean(ce(labels, logits_i2t)) + tf.reduce_mean(ce(labels, logits_t2i)))
    return loss, logits_i2t, logits_t2i


def soft_target(image_local, text_local, image_global, text_global, ids_local, ids_global, offset, scale):
    """The Keras "natural language image search" loss: targets softened by in-modality similarity.

    targets = softmax((image-image + text-text similarity) / 2 * scale); pairs of one image get
    similar targets by construction, so no mask is applied.
    """
    logits_i2t = scale * tf.matmul(image_local, text_global, transpose_b=True)
    logits_t2i = scale * tf.matmul(text_local, image_global, transpose_b=True)
    image_sim = tf.matmul(image_local, image_global, transpose_b=True)
    text_sim = tf.matmul(text_local, text_global, transpose_b=True)
    targets = tf.stop_gradient(tf.nn.softmax(0.5 * (image_sim + text_sim) * scale, axis=-1))
    ce = tf.nn.softmax_cross_entropy_with_logits
    loss = 0.5 * (tf.reduce_mean(ce(targets, logits_i2t)) + tf.reduce_mean(ce(targets, logits_t2i)))
    return loss, logits_i2t, logits_t2i


def siglip(image_local, text_local, image_global, text_global, ids_local, ids_global, offset, scale, bias=0.0):
    """SigLIP pairwise sigmoid loss; pairs of the same image (or caption) count as positives.

    Normalised per image row (sum over columns, mean over rows), as in the SigLIP paper.
    """
    logits_i2t = scale * tf.matmul(image_local, text_global, transpose_b=True) + bias
    logits_t2i = scale * tf.matmul(text_local, image_global, transpose_b=True) + bias
    positives = tf.cast(same_key(ids_local, ids_global), logits_i2t.dtype)
    signs = 2.0 * positives - 1.0
    loss = -tf.reduce_mean(tf.reduce_sum(tf.math.log_sigmoid(signs * logits_i2t), axis=-1))
    return loss, logits_i2t, logits_t2i


LOSSES = {"infonce": infonce, "soft_target": soft_target, "siglip": siglip}


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None

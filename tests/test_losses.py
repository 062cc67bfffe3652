"""Losses against hand computations on tiny cases."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dual_encoder.model import losses


def _unit(rows):
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _call(fn, image, text, ids, scale, offset=0, image_global=None, text_global=None, ids_global=None):
    image_global = image if image_global is None else image_global
    text_global = text if text_global is None else text_global
    ids_global = ids if ids_global is None else ids_global
    loss, a, b = fn(
        tf.constant(image), tf.constant(text), tf.constant(image_global), tf.constant(text_global),
        tf.constant(ids, tf.int64), tf.constant(ids_global, tf.int64), offset, scale,
    )
    return float(loss), a.numpy(), b.numpy()


def test_infonce_two_orthogonal_pairs():
    eye = _unit([[1, 0], [0, 1]])
    loss, logits, _ = _call(losses.infonce, eye, eye, [1, 2], scale=1.0)
    # each row: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1), both directions alike
    assert loss == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    np.testing.assert_allclose(logits, [[1, 0], [0, 1]], atol=1e-6)


def test_infonce_scale_sharpens():
    eye = _unit([[1, 0], [0, 1]])
    loss, _, _ = _call(losses.infonce, eye, eye, [1, 2], scale=10.0)
    assert loss == pytest.approx(math.log(1 + math.exp(-10)), abs=2e-6)


def test_infonce_masks_other_captions_of_the_same_image():
    image = _unit([[1, 0], [1, 0], [0, 1]])  # pairs 0 and 1 show the same image
    text = _unit([[1, 0], [1, 0.2], [0, 1]])
    loss, logits, _ = _call(losses.infonce, image, text, [7, 7, 9], scale=1.0)
    assert logits[0, 1] < -1e8 and logits[1, 0] < -1e8
    s = image @ text.T
    row0 = -math.log(math.exp(s[0, 0]) / (math.exp(s[0, 0]) + math.exp(s[0, 2])))
    row1 = -math.log(math.exp(s[1, 1]) / (math.exp(s[1, 1]) + math.exp(s[1, 2])))
    row2 = -math.log(math.exp(s[2, 2]) / np.exp(s[2]).sum())
    t = s.T  # text->image, same mask
    col0 = -math.log(math.exp(t[0, 0]) / (math.exp(t[0, 0]) + math.exp(t[0, 2])))
    col1 = -math.log(math.exp(t[1, 1]) / (math.exp(t[1, 1]) + math.exp(t[1, 2])))
    col2 = -math.log(math.exp(t[2, 2]) / np.exp(t[2]).sum())
    expected = 0.5 * ((row0 + row1 + row2) / 3 + (col0 + col1 + col2) / 3)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_soft_target_matches_numpy():
    rng = np.random.default_rng(0)
    image, text = _unit(rng.normal(size=(4, 3))), _unit(rng.normal(size=(4, 3)))
    scale = 2.0
    loss, _, _ = _call(losses.soft_target, image, text, [1, 2, 3, 4], scale=scale)

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    targets = softmax(0.5 * (image @ image.T + text @ text.T) * scale)
    ce_i = -(targets * np.log(softmax(scale * image @ text.T))).sum(1).mean()
    ce_t = -(targets * np.log(softmax(scale * text @ image.T))).sum(1).mean()
    assert loss == pytest.approx(0.5 * (ce_i + ce_t), rel=1e-5)


def test_siglip_matches_numpy_with_same_image_positives():
    rng = np.random.default_rng(1)
    image, text = _unit(rng.normal(size=(3, 4))), _unit(rng.normal(size=(3, 4)))
    ids = [5, 5, 6]
    loss, a, _ = _call(lambda *args: losses.siglip(*args, bias=-1.0), image, text, ids, scale=3.0)
    z = np.where(np.equal.outer(ids, ids), 1.0, -1.0)
    logits = 3.0 * image @ text.T - 1.0
    expected = -np.log(1 / (1 + np.exp(-z * logits))).sum(1).mean()
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_replica_rows_with_offset_match_the_full_batch(name):
    """Two replicas' halves, each against the gathered batch, average to the one-device loss."""
    rng = np.random.default_rng(2)
    image, text = _unit(rng.normal(size=(6, 5))), _unit(rng.normal(size=(6, 5)))
    ids = [1, 2, 2, 3, 4, 5]
    fn = losses.get_loss(name)
    full, _, _ = _call(fn, image, text, ids, scale=4.0)
    halves = [
        _call(fn, image[s], text[s], ids[s], 4.0, offset=s.start, image_global=image, text_global=text, ids_global=ids)[0]
        for s in (slice(0, 3), slice(3, 6))
    ]
    assert np.mean(halves) == pytest.approx(full, rel=1e-5)


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="infonce"):
        losses.get_loss("triplet")

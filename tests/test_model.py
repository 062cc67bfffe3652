"""DualEncoder behaviour: temperature clamp and weight decay, frozen towers, heads, XLA step."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import config as run_config
from dual_encoder import towers, training
from dual_encoder.model import DualEncoder, ProjectionHead, losses

CAPTIONS = ["a red circle", "two blue squares", "three green triangles on the left", "a white diamond"]


def _model(**kwargs):
    image = towers.build_image_tower("tiny", weights=None, image_size=32)
    text = towers.build_text_tower("tiny", pretrained=False, sequence_length=8,
                                   vocabulary=towers.build_vocabulary(CAPTIONS * 10, size=50))
    towers.freeze(image.model, False)
    towers.freeze(text.model, False)
    return DualEncoder(image.model, text.model, text.preprocessor, image_size=(32, 32), projection_dim=8, **kwargs)


def _batch(model):
    rng = np.random.default_rng(0)
    return {
        "images": tf.constant(rng.uniform(0, 255, (4, 32, 32, 3)), tf.float32),
        "tokens": model.text_preprocessor(tf.constant(CAPTIONS)),
        "image_ids": tf.constant([1, 2, 3, 4], tf.int64),
    }


def test_logit_scale_is_clamped_at_100_in_use_and_after_a_step():
    model = _model(logit_scale=6.0)  # e^6 = 403 > 100
    assert float(model.scale()) == pytest.approx(100.0, rel=1e-5)
    model.compile(optimizer=training.make_optimizer(run_config.get_preset("sample"), model))
    model.train_step(_batch(model))
    assert float(model.logit_scale.numpy()) == pytest.approx(losses.LOGIT_SCALE_MAX, abs=1e-6)


def test_temperature_starts_at_clip_value_and_can_be_fixed():
    learned = _model()
    assert float(learned.scale()) == pytest.approx(1 / 0.07, rel=1e-5)
    fixed = _model(learn_temperature=False, logit_scale=math.log(12.0))
    assert all("logit_scale" not in v.name for v in fixed.trainable_variables)
    fixed.compile(optimizer="adam")
    fixed.train_step(_batch(fixed))
    assert float(fixed.scale()) == pytest.approx(12.0, rel=1e-6)


def test_frozen_towers_leave_only_heads_and_temperature_trainable():
    model = _model(head="linear")
    names = sorted(v.path for v in model.trainable_variables)
    assert all(n.startswith(("image_head", "text_head")) or "logit_scale" in n for n in names), names
    assert len(names) == 5  # two kernels, two biases, the temperature


def test_weight_decay_skips_temperature_biases_and_norms():
    model = _model(head="mlp")
    optimizer = training.make_optimizer(run_config.get_preset("reference"), model)
    optimizer.build(model.trainable_variables)
    decayed = {v.path: optimizer._use_weight_decay(v) for v in model.trainable_variables}
    assert not decayed[model.logit_scale.path]
    assert all(not d for p, d in decayed.items() if p.endswith(("bias", "gamma", "beta")))
    assert all(d for p, d in decayed.items() if p.endswith("kernel"))


def test_heads_are_unit_norm_and_mlp_has_the_reference_layers():
    features = tf.random.normal((5, 12))
    for kind in ProjectionHead.KINDS:
        out = ProjectionHead(6, kind)(features)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    mlp = ProjectionHead(6, "mlp")
    mlp.build((None, 12))
    assert {type(layer).__name__ for layer in (mlp.project, mlp.hidden, mlp.dropout, mlp.norm)} == {"Dense", "Dropout",
                                                                                                    "LayerNormalization"}
    with pytest.raises(ValueError, match="mlp"):
        ProjectionHead(6, "attention")


def test_xla_compiled_step_matches_the_plain_step():
    results = []
    for jit in (False, True):
        tf.keras.utils.set_random_seed(1)
        model = _model(head="linear", dropout=0.0)
        model.compile(optimizer="sgd", jit_compile=jit)
        history = model.fit(tf.data.Dataset.from_tensors(_batch(model)).repeat(3), epochs=1, verbose=0)
        results.append(history.history["loss"][-1])
    assert results[1] == pytest.approx(results[0], rel=1e-4)


def test_logs_hold_the_temperature_once_and_validation_results():
    model = _model(head="linear")
    model.compile(optimizer="sgd")
    batches = tf.data.Dataset.from_tensors(_batch(model)).repeat(2)
    history = model.fit(batches, validation_data=batches, epochs=1, verbose=0).history
    assert history["temperature"][0] == pytest.approx(1.0 / float(model.scale()), rel=1e-6)
    assert {"val_loss", "val_i2t_accuracy", "val_t2i_accuracy"} <= set(history)
    assert "val_temperature" not in history


def test_mixed_float16_scales_the_loss_and_keeps_embeddings_float32():
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(head="mlp")
        model.compile(optimizer="adam")
        logs = model.train_step(_batch(model))
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        assert math.isfinite(float(logs["loss"]))
        assert model.embed_images(_batch(model)).dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_feature_dropout_drops_a_share_in_training_only_and_follows_its_seed():
    from dual_encoder.model import FeatureDropout

    ones = tf.ones((512, 1280))
    layer = FeatureDropout(0.3, seed=7)
    np.testing.assert_array_equal(layer(ones, training=False), ones)
    first, second = layer(ones, training=True).numpy(), layer(ones, training=True).numpy()
    assert abs((first == 0).mean() - 0.3) < 0.01
    np.testing.assert_allclose(first[first != 0], 1 / 0.7, rtol=1e-6)  # the kept ones scaled: the mean is kept
    assert (first != second).any()  # a new mask per step
    # Compiled, as in the cached-feature step (XLA's Philox stream differs from the kernel's): the
    # same share, and the same masks again from the same seed.
    masks = []
    for _ in range(2):
        again = FeatureDropout(0.3, seed=7)
        masks.append(tf.function(lambda x, layer=again: layer(x, training=True), jit_compile=True)(ones).numpy())
    np.testing.assert_array_equal(masks[0], masks[1])
    assert abs((masks[0] == 0).mean() - 0.3) < 0.01
    with pytest.raises(ValueError, match="feature dropout"):
        FeatureDropout(1.0)


def test_feature_dropout_leaves_inference_and_the_class_prior_path_whole():
    from dual_encoder.model import ClassPrior

    plain = _model(head="linear", dropout=0.0)
    dropped = _model(head="linear", dropout=0.0, feature_dropout=0.5)
    dropped.set_weights(plain.get_weights())
    batch = _batch(plain)
    for embed in ("embed_images", "embed_texts"):
        np.testing.assert_allclose(getattr(dropped, embed)(batch), getattr(plain, embed)(batch), atol=1e-6)
    assert not np.allclose(dropped.embed_texts(batch, training=True), plain.embed_texts(batch))
    restored = type(dropped).from_config(dropped.get_config())
    assert restored.feature_dropout.rate == 0.5 and plain.feature_dropout is None

    image_dim, text_dim = plain.image_encoder.output_shape[-1], plain.text_encoder.output_shape[-1]
    prior = ClassPrior(6, text_dim, top_k=2)
    prior.build((None, image_dim))
    rng = np.random.default_rng(0)
    prior.set_weights([rng.normal(size=(image_dim, 6)), rng.normal(size=6), rng.normal(size=(6, text_dim))])
    with_prior = _model(head="linear", dropout=0.0, feature_dropout=0.5, class_prior=prior)
    # The image head's own path starts closed (gate 0): dropping its input must change nothing yet.
    np.testing.assert_allclose(with_prior.embed_images(batch, training=True), with_prior.embed_images(batch), atol=1e-6)
    with_prior.image_head_gate.assign(1.0)
    assert not np.allclose(with_prior.embed_images(batch, training=True), with_prior.embed_images(batch))

"""Class prior (ConSE): the layer's arithmetic, its place in DualEncoder, training and export with
it, clear errors, and on the real towers in ../shared that it reproduces the checkpoint's own
classifier and classifies Animals-10 photos zero-shot with no training."""

import json
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import towers, training
from dual_encoder.model import DualEncoder, class_prior
from dual_encoder.testing import SHARED, tiny_config

RNG = np.random.default_rng(0)


def tiny_resnet():
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64], stackwise_num_blocks=[1],
        stackwise_num_strides=[1], block_type="basic_block", use_pre_activation=False, image_shape=(None, None, 3))


def tiny_classifier_preset(path, num_classes=1000):
    """A randomly initialised keras-hub ResNet ImageClassifier saved as a local preset."""
    keras_hub.models.ResNetImageClassifier(backbone=tiny_resnet(), num_classes=num_classes).save_to_preset(str(path))
    return str(path)


@pytest.fixture(scope="module")
def text_tower():
    vocabulary = towers.build_vocabulary(["a photo of a dog", "a cat on a mat", "red car"] * 5, size=60)
    return towers.build_text_tower("tiny", pretrained=False, sequence_length=8, vocabulary=vocabulary)


def test_layer_is_the_probability_weighted_mean_of_the_top_k_class_texts():
    kernel, bias, text = RNG.normal(size=(6, 7)), RNG.normal(size=7), RNG.normal(size=(7, 5))
    prior = class_prior.ClassPrior(7, 5, top_k=3)
    prior.build((None, 6))
    prior.set_weights([kernel, bias, text])
    features = RNG.normal(size=(4, 6)).astype("float32")
    logits = features @ kernel + bias
    expected = []
    for row in logits:
        top = np.argsort(-row)[:3]
        p = np.exp(row[top] - row[top].max())
        expected.append((p / p.sum()) @ text[top])
    np.testing.assert_allclose(prior(features), np.array(expected), rtol=1e-5, atol=1e-5)
    assert not prior.trainable_weights
    with pytest.raises(ValueError, match="top_k"):
        class_prior.ClassPrior(7, 5, top_k=8)


def test_dual_encoder_starts_at_the_prior_trains_the_gate_and_round_trips(text_tower, tmp_path):
    image = towers.build_image_tower("tiny", weights=None, image_size=32)
    names = ["dog", "cat", "car", "tree"]
    head = (RNG.normal(size=(image.feature_dim, 4)).astype("float32"), np.zeros(4, "float32"))
    prior = class_prior.build_class_prior("tiny", image.feature_dim, text_tower, top_k=2, class_names=names, head=head)
    np.testing.assert_allclose(prior.get_weights()[2], class_prior.embed_class_names(text_tower, names), atol=1e-6)
    model = DualEncoder(image.model, text_tower.model, text_tower.preprocessor, image_size=(32, 32), projection_dim=16,
                        head="linear", class_prior=prior)
    features = RNG.normal(size=(3, image.feature_dim)).astype("float32")
    embedded = model.embed_images({"image_features": features}).numpy()
    expected = tf.math.l2_normalize(model.text_head.project_features(prior(features)), axis=-1).numpy()
    np.testing.assert_allclose(embedded, expected, atol=1e-6)  # gate 0: the prior alone
    assert "image_head_gate" in [w.name for w in model.trainable_weights]
    assert not any("class" in w.name for w in model.trainable_weights)

    model.image_head_gate.assign(0.7)
    model.save(str(tmp_path / "model.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    np.testing.assert_allclose(loaded.embed_images({"image_features": features}), model.embed_images(
        {"image_features": features}), atol=1e-6)
    assert not np.allclose(loaded.embed_images({"image_features": features}), embedded, atol=1e-3)  # gate matters


def test_training_with_the_prior_lowers_the_loss_and_exports_it(shard_dir, tmp_path):
    """End to end on a local classifier preset: features cached, gate opened, SavedModel in a
    fresh process equal to the trained model."""
    config = tiny_config(epochs=4)
    config.model.image_encoder = tiny_classifier_preset(tmp_path / "classifier")
    config.model.image_size = 48
    config.model.train_image_tower = config.model.train_text_tower = False
    config.model.class_prior = config.model.pretrained = True  # the classifier preset is "pretrained"
    results = training.train(config, [shard_dir], tmp_path / "run", verbose=0)
    log = training.read_log(tmp_path / "run" / "log.csv")
    assert results["feature_cache"]["used"]
    assert log["loss"][-1] < 0.9 * log["loss"][0]
    model = keras.saving.load_model(str(tmp_path / "run" / "model.keras"))
    assert model.class_prior is not None and float(model.image_head_gate.numpy()) != 0.0
    images = RNG.integers(0, 256, size=(2, 60, 50, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    script = ("import json, sys, numpy as np, tensorflow as tf, tensorflow_text\n"
              "m = tf.saved_model.load(sys.argv[1])\n"
              "print(json.dumps(m.encode_image(np.load(sys.argv[2])).numpy().tolist()))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run" / "saved_model"), str(tmp_path / "images.npy")],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    from dual_encoder.data.pipeline import resize_image
    expected = model.embed_images({"images": resize_image(tf.constant(images), model.image_size, model.resize)})
    np.testing.assert_allclose(np.array(json.loads(out)), expected, atol=1e-5)


def test_unusable_image_towers_give_clear_errors(text_tower, tmp_path):
    with pytest.raises(class_prior.ClassPriorUnavailable, match="--no-class-prior"):
        class_prior.build_class_prior("tiny", 32, text_tower)
    ten = tiny_classifier_preset(tmp_path / "ten", num_classes=10)
    with pytest.raises(class_prior.ClassPriorUnavailable, match="10 classes"):
        class_prior.build_class_prior(ten, 64, text_tower)
    backbone_only = tmp_path / "backbone"
    tiny_resnet().save_to_preset(str(backbone_only))
    with pytest.raises(class_prior.ClassPriorUnavailable, match="no ImageClassifier"):
        class_prior.build_class_prior(str(backbone_only), 64, text_tower)


# --- the real towers in ../shared -------------------------------------------------------

SHARED_IMAGE = SHARED / "weights" / "efficientnet_lite0_keras"
SHARED_TEXT = SHARED / "weights" / "all-minilm-l6-v2"
ANIMALS = SHARED / "data" / "animals10_proxy"
needs_shared = pytest.mark.skipif(not (SHARED_IMAGE.is_dir() and SHARED_TEXT.is_dir() and ANIMALS.is_dir()),
                                  reason="../shared weights and animals10_proxy absent")


@needs_shared
def test_real_prior_matches_the_checkpoint_classifier_and_classifies_animals_zero_shot():
    from dual_encoder.data.pipeline import resize_image
    from dual_encoder.evaluation import datasets
    from dual_encoder.evaluation.embedders import load_rgb

    image = towers.build_image_tower(str(SHARED_IMAGE))
    text = towers.build_text_tower(str(SHARED_TEXT), sequence_length=32)
    prior = class_prior.build_class_prior(str(SHARED_IMAGE), image.feature_dim, text)
    data = datasets.load_animals10(ANIMALS)
    pixels = tf.concat([resize_image(tf.constant(load_rgb(s)[None]), image.image_size, image.resize) for s in data.sources], 0)
    features = image.model.predict(pixels, batch_size=16, verbose=0)

    classifier = keras_hub.models.ImageClassifier.from_preset(str(SHARED_IMAGE))
    np.testing.assert_allclose(prior.logits(features), classifier(pixels * (1 / 128) - 127 / 128), atol=1e-3)
    prompts = class_prior.embed_class_names(text, data.class_names)
    accuracy = float(np.mean((prior(features).numpy() @ prompts.T).argmax(1) == data.labels))
    assert accuracy >= 0.6, accuracy  # chance 0.1; no heads, no training

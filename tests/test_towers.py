"""Towers: tiny towers, keras.applications at small sizes, local weights and presets, the offline
error, freezing. Offline and fast: every network access fails the test."""

import json
import socket
import urllib.error

import kagglehub
import keras
import keras_hub
import numpy as np
import pytest
import requests
import tensorflow as tf

from dual_encoder import towers

CAPTIONS = [
    "a dog runs on the beach", "two cats sleep on a red sofa", "a man rides a bike down the street",
    "a plate of pasta with tomato sauce", "children play football in the park", "a café with two chairs",
] * 4
PIXELS = np.random.RandomState(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Towers must fail (or work) without any traffic: a connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    keras.backend.clear_session()  # big models left behind slow down every later build


@pytest.fixture(scope="module")
def vocabulary():
    return towers.build_vocabulary(CAPTIONS, size=300)


@pytest.fixture(scope="module")
def tiny_text(vocabulary):
    return towers.build_text_tower("tiny", vocabulary=vocabulary, sequence_length=12)


@pytest.fixture(scope="module")
def resnet50():
    return towers.build_image_tower("resnet50", weights=None, image_size=32)


def backbone_of(model):
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


# --- tiny towers -------------------------------------------------------------------------


def test_tiny_text_tower_pads_truncates_and_pools(tiny_text, vocabulary):
    assert vocabulary[:5] == list(towers.SPECIAL_TOKENS)
    tokens = tiny_text.preprocessor(["a dog", "a man rides a bike down the street " * 4])
    assert {k: (v.dtype, tuple(v.shape)) for k, v in tokens.items()} == {
        k: (tf.int32, (2, 12)) for k in ("token_ids", "padding_mask", "segment_ids")}
    ids, mask = tokens["token_ids"].numpy(), tokens["padding_mask"].numpy()
    cls, sep, pad = (vocabulary.index(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    words = tiny_text.preprocessor.tokenizer("a dog").numpy().tolist()
    n = len(words) + 2
    assert ids[0, :n].tolist() == [cls, *words, sep] and vocabulary[1] not in words
    assert mask[0].tolist() == [1] * n + [0] * (12 - n) and set(ids[0, n:]) == {pad}
    assert mask[1].all() and ids[1, 0] == cls and ids[1, -1] == sep  # truncated, still closed
    features = tiny_text.model(tokens).numpy()
    assert features.shape == (2, tiny_text.feature_dim) == (2, towers.TINY_TEXT.hidden_dim)
    alone = tiny_text.model(tiny_text.preprocessor(["a dog"])).numpy()
    np.testing.assert_allclose(alone[0], features[0], atol=1e-5)  # padding is masked out


def test_preprocessor_runs_in_tf_data_and_tf_function(tiny_text):
    eager = tiny_text.preprocessor(CAPTIONS[:3])
    batched = next(iter(tf.data.Dataset.from_tensor_slices(CAPTIONS[:3]).batch(3).map(tiny_text.preprocessor)))
    one = next(iter(tf.data.Dataset.from_tensor_slices(CAPTIONS[:1]).map(tiny_text.preprocessor)))
    for key in eager:
        np.testing.assert_array_equal(batched[key], eager[key])
        np.testing.assert_array_equal(one[key], eager[key][0])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode(texts):
        return tiny_text.model(tiny_text.preprocessor(texts), training=False)

    np.testing.assert_allclose(encode(tf.constant(CAPTIONS[:3])), tiny_text.model(eager), atol=1e-5)


def test_text_tower_round_trips_through_its_config(tiny_text):
    """The vocabulary travels in the preprocessor's config (SavedModel export: test_export.py)."""
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(tiny_text.preprocessor)))
    preprocessor = keras.saving.deserialize_keras_object(config)
    tokens = preprocessor(CAPTIONS[:3])
    np.testing.assert_array_equal(tokens["token_ids"], tiny_text.preprocessor(CAPTIONS[:3])["token_ids"])
    model = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(
        tiny_text.model))))
    model.set_weights(tiny_text.model.get_weights())
    np.testing.assert_allclose(model(tokens), tiny_text.model(tokens), atol=1e-6)


def test_tiny_text_tower_needs_a_vocabulary_and_only_it_takes_one(vocabulary):
    with pytest.raises(ValueError, match="build_vocabulary"):
        towers.build_text_tower("tiny")
    with pytest.raises(ValueError, match="tiny"):
        towers.build_text_tower("bert_tiny_en_uncased", vocabulary=vocabulary)


def test_tiny_image_tower():
    tower = towers.build_image_tower("tiny")
    assert tower.image_size == (64, 64) and tower.resize in ("crop", "squash")
    assert tower.model(PIXELS).shape == (2, tower.feature_dim) == (2, towers.TINY_IMAGE.filters[-1])
    assert json.loads(json.dumps(tower.spec)) == tower.spec
    assert tower.spec["normalization"]["scale"] == [1 / 255] * 3


# --- keras.applications ------------------------------------------------------------------


@pytest.mark.parametrize("name, size, preprocess", [
    ("resnet50", 32, keras.applications.resnet50.preprocess_input),  # caffe: BGR, mean-subtracted
    ("xception", 71, keras.applications.xception.preprocess_input),  # tf: [-1, 1]
])
def test_application_towers_normalise_inside(name, size, preprocess, resnet50):
    tower = resnet50 if name == "resnet50" else towers.build_image_tower(name, weights=None, image_size=size)
    pixels = np.random.RandomState(1).uniform(0, 255, (2, size, size, 3)).astype("float32")
    features = tower.model(pixels).numpy()
    assert features.shape == (2, tower.feature_dim) == (2, 2048) and tower.image_size == (size, size)
    # keras' own preprocess_input, applied by hand, is what the tower does inside.
    expected = backbone_of(tower.model)(preprocess(pixels.copy())).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_local_weights_file_loads_and_changes_the_spec(tmp_path, resnet50):
    first = resnet50
    path = tmp_path / "resnet50_notop.weights.h5"
    backbone_of(first.model).save_weights(path)
    second = towers.build_image_tower("resnet50", weights=str(path), image_size=32)
    pixels = PIXELS[:, :32, :32]
    np.testing.assert_allclose(second.model(pixels), first.model(pixels), rtol=1e-5, atol=1e-5)
    assert second.spec["weights"]["path"] == str(path) and len(second.spec["weights"]["sha256"]) == 64
    assert first.spec["weights"] is None and second.spec != first.spec
    with pytest.raises(FileNotFoundError, match="not found"):
        towers.build_image_tower("resnet50", weights=str(tmp_path / "missing.h5"))


def test_efficientnet_weights_file_matches_keras_imagenet_graph(tmp_path, monkeypatch):
    """keras adds a rescale to EfficientNet only for weights="imagenet"; a local copy of the
    file must give the same features as keras' own imagenet graph (which normalises inside)."""
    tower = towers.build_image_tower("efficientnetb0", weights=None, image_size=32)
    base = backbone_of(tower.model)
    norm = next(layer for layer in base.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign([0.485, 0.456, 0.406])
    norm.adapt_variance.assign([0.229**2, 0.224**2, 0.225**2])
    norm.finalize_state()
    path = str(tmp_path / "efficientnetb0_notop.weights.h5")
    base.save_weights(path)
    tower = towers.build_image_tower("efficientnetb0", weights=path, image_size=32)
    monkeypatch.setattr("keras.src.applications.efficientnet.file_utils.get_file", lambda *a, **k: path)
    keras_imagenet = keras.applications.EfficientNetB0(include_top=False, weights="imagenet",
                                                       input_shape=(32, 32, 3), pooling="avg")
    pixels = PIXELS[:, :32, :32]
    expected = keras_imagenet(pixels).numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(tower.model(pixels), expected, atol=1e-4 * scale)
    assert np.abs(base(pixels).numpy() - expected).max() > 0.1 * scale  # the rescale matters


# --- keras-hub presets -------------------------------------------------------------------


def test_local_keras_hub_image_preset_reads_its_converter(tmp_path):
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1, num_heads=2,
                                            hidden_dim=16, mlp_dim=32)
    backbone.save_to_preset(str(tmp_path))
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0,
                                       crop_to_aspect_ratio=False).save_to_preset(str(tmp_path))
    tower = towers.build_image_tower(str(tmp_path))
    assert (tower.image_size, tower.resize, tower.feature_dim) == ((32, 32), "squash", 16)
    assert tower.spec["pooling"] == "cls" and tower.spec["normalization"]["offset"] == [-1.0] * 3
    pixels = PIXELS[:, :32, :32]
    np.testing.assert_allclose(tower.model(pixels), backbone(pixels / 127.5 - 1)[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="fixed input"):
        towers.build_image_tower(str(tmp_path), image_size=64)
    with pytest.raises(ValueError, match="not a text backbone"):
        towers.build_text_tower(str(tmp_path))


def test_local_decoder_preset_pools_the_last_real_token(tmp_path):
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(letters)}, "Ġ": 27}
    vocabulary.update({"Ġ" + c: 28 + i for i, c in enumerate(letters)})
    keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["Ġ " + c for c in letters]).save_to_preset(
        str(tmp_path))
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=len(vocabulary), num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32, max_sequence_length=32)
    backbone.save_to_preset(str(tmp_path))
    tower = towers.build_text_tower(str(tmp_path), sequence_length=8)
    tokens = tower.preprocessor(["a cab", "ab ab ab ab ab ab ab ab"])
    assert tower.spec["pooling"] == "last" and set(tokens) == {"token_ids", "padding_mask"}
    last = tokens["padding_mask"].numpy().sum(axis=1) - 1
    sequence = backbone({k: v for k, v in tokens.items()}).numpy()
    np.testing.assert_allclose(tower.model(tokens), sequence[np.arange(2), last], atol=1e-5)
    rebuilt = towers.TextPreprocessor.from_config(json.loads(json.dumps(tower.preprocessor.get_config())))
    np.testing.assert_array_equal(rebuilt(["a cab"])["token_ids"], tokens["token_ids"][:1])
    with pytest.raises(ValueError, match="not an image backbone"):
        towers.build_image_tower(str(tmp_path))


# --- errors ------------------------------------------------------------------------------


def test_offline_download_ends_in_one_clear_error(monkeypatch):
    def keras_offline(*args, **kwargs):  # what urllib raises when DNS fails; keras wraps it
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    def kaggle_offline(*args, **kwargs):  # what kagglehub's requests session raises offline
        raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='api.kaggle.com', port=443): "
                                                  "Max retries exceeded (NameResolutionError)")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", keras_offline)
    monkeypatch.setattr(kagglehub, "model_download", kaggle_offline)
    builds = {"'mobilenetv2'": lambda: towers.build_image_tower("mobilenetv2", image_size=96),
              "'vit_base_patch16_224_imagenet'": lambda: towers.build_image_tower("vit_base_patch16_224_imagenet"),
              "'bert_tiny_en_uncased'": lambda: towers.build_text_tower("bert_tiny_en_uncased")}
    for name, build in builds.items():
        with pytest.raises(towers.PretrainedWeightsUnavailable) as info:
            build()
        message = str(info.value)
        assert name in message and "local" in message and "directory" in message, message
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no deep traceback
    application_message = str(pytest.raises(towers.PretrainedWeightsUnavailable, builds["'mobilenetv2'"]).value)
    assert "--image-weights /path/to/mobilenetv2_notop.h5" in application_message  # the flags users type
    assert "--no-pretrained" in application_message


def test_unknown_names_list_the_known_ones_and_missing_folders_say_so():
    with pytest.raises(ValueError, match="xception.*efficientnetb0"):
        towers.build_image_tower("not_a_tower")
    with pytest.raises(ValueError, match="bert_base_en_uncased"):
        towers.build_text_tower("not_a_text_tower")
    with pytest.raises(FileNotFoundError, match="text tower './no/such/folder': no such directory"):
        towers.build_text_tower("./no/such/folder")
    with pytest.raises(FileNotFoundError, match="image tower '/no/such/enc': no such directory"):
        towers.build_image_tower("/no/such/enc")


# --- freezing and specs ------------------------------------------------------------------


def test_freeze_all_none_or_the_last_layers(tiny_text):
    model = tiny_text.model
    towers.freeze(model, False)
    assert not model.trainable_weights
    towers.freeze(model, True, last_n_layers=1)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"transformer_layer_1"}
    towers.freeze(model, True)
    assert len(model.trainable_weights) == len(model.weights)

    inputs = keras.Input((8, 8, 3))
    x = inputs
    for filters in (4, 8):
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(filters, 3)(x))
    cnn = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    towers.freeze(cnn, True, last_n_layers=2)
    trainable = [layer for layer in cnn.layers if layer.trainable and layer.weights]
    assert [type(layer).__name__ for layer in trainable] == ["Conv2D", "Dense"]  # BN stays frozen
    with pytest.raises(ValueError):
        towers.freeze(cnn, True, last_n_layers=-1)


def test_frozen_text_tower_only_trains_what_is_on_top(tiny_text):
    towers.freeze(tiny_text.model, False)
    try:
        head, optimizer = keras.layers.Dense(4), keras.optimizers.SGD(0.1)
        tokens = tiny_text.preprocessor(CAPTIONS[:4])
        before = [w.numpy() for w in tiny_text.model.weights]
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(head(tiny_text.model(tokens, training=False)) ** 2)
        variables = head.trainable_variables + tiny_text.model.trainable_variables
        assert len(variables) == 2  # the head's kernel and bias only
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        for old, new in zip(before, tiny_text.model.weights):
            np.testing.assert_array_equal(old, new.numpy())
    finally:
        towers.freeze(tiny_text.model, True)


def test_spec_is_json_and_follows_weights_and_preprocessing(vocabulary, tiny_text):
    text = tiny_text.spec
    assert json.loads(json.dumps(text)) == text
    assert towers.build_text_tower("tiny", vocabulary=vocabulary, sequence_length=16).spec != text
    assert towers.build_text_tower("tiny", vocabulary=vocabulary[:-1], sequence_length=12).spec != text
    assert towers.from_spec(text).spec == text
    image = towers.build_image_tower("tiny", image_size=32)
    assert image.spec != towers.build_image_tower("tiny").spec
    assert towers.from_spec(json.loads(json.dumps(image.spec))).spec == image.spec

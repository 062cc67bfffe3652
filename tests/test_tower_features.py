"""Richer frozen-tower features: image stages below the top (`--image-feature-stages`) and text
blocks below the top (`--text-feature-layers`) pooled and appended to the towers' own features."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import config as run_config
from dual_encoder import towers
from dual_encoder.errors import InvalidArgumentError
from dual_encoder.export import export_saved_model
from dual_encoder.model import DualEncoder, build_class_prior
from dual_encoder.training import feature_cache, trainer

CAPTIONS = ["two red circles on the left", "a blue square at the top", "a green triangle"]
PIXELS = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="module")
def vocabulary():
    return towers.build_vocabulary(CAPTIONS * 20, size=60)


def test_image_stages_append_the_pooled_stage_outputs_after_the_top_features():
    plain = towers.build_image_tower("tiny", weights=None, image_size=32)
    staged = towers.build_image_tower("tiny", weights=None, image_size=32, feature_stages=2)
    staged.model.set_weights(plain.model.get_weights())  # the same convs; pooling adds no weights
    filters = towers.TINY_IMAGE.filters
    assert staged.feature_dim == filters[-1] + filters[0] + filters[1] and staged.pooled_dim == filters[-1]
    out = staged.model(PIXELS).numpy()
    np.testing.assert_allclose(out[:, :filters[-1]], plain.model(PIXELS).numpy(), atol=1e-6)
    # Then stage 1's and stage 2's outputs, averaged over their positions.
    backbone = next(layer for layer in plain.model.layers if isinstance(layer, keras.Model))
    probe = keras.Model(backbone.input, [backbone.get_layer("block1_conv").output, backbone.get_layer("block2_conv").output])
    normalized = plain.model.get_layer("pixel_normalization")(PIXELS)
    first, second = (x.numpy().mean(axis=(1, 2)) for x in probe(normalized))
    np.testing.assert_allclose(out[:, filters[-1]:], np.concatenate([first, second], 1), atol=1e-5)
    assert staged.spec["feature_stages"] == 2 and "feature_stages" not in plain.spec
    # A different tower, so a different feature cache folder.
    assert feature_cache.folder_name(staged) != feature_cache.folder_name(plain)


def test_more_image_stages_than_the_tower_has_is_one_clear_error():
    with pytest.raises(InvalidArgumentError, match="--image-feature-stages 3: image tower 'tiny' has 2 stages"):
        towers.build_image_tower("tiny", weights=None, image_size=32, feature_stages=3)


def test_text_layers_append_the_pooled_lower_block_after_the_top_features(vocabulary):
    plain = towers.build_text_tower("tiny", pretrained=False, sequence_length=12, vocabulary=vocabulary)
    layered = towers.build_text_tower("tiny", pretrained=False, sequence_length=12, vocabulary=vocabulary,
                                      feature_layers=1)
    layered.model.set_weights(plain.model.get_weights())
    width = plain.feature_dim
    assert layered.feature_dim == 2 * width and layered.spec["feature_layers"] == 1
    tokens = plain.preprocessor(tf.constant(CAPTIONS))
    out = layered.model(tokens).numpy()
    np.testing.assert_allclose(out[:, :width], plain.model(tokens).numpy(), atol=1e-6)
    assert not np.allclose(out[:, width:], out[:, :width], atol=1e-3)  # another layer, not the top twice
    with pytest.raises(InvalidArgumentError, match="--text-feature-layers 2: text tower 'tiny' has 1 transformer"):
        towers.build_text_tower("tiny", pretrained=False, sequence_length=12, vocabulary=vocabulary, feature_layers=2)


def test_the_class_prior_reads_only_the_leading_pooled_features(vocabulary):
    staged = towers.build_image_tower("tiny", weights=None, image_size=32, feature_stages=2)
    text = towers.build_text_tower("tiny", pretrained=False, sequence_length=12, vocabulary=vocabulary)
    rng = np.random.default_rng(1)
    head = (rng.standard_normal((staged.pooled_dim, 3)).astype("float32"), np.zeros(3, "float32"))
    names = ["circle", "square", "triangle"]
    prior = build_class_prior("tiny", staged.feature_dim, text, top_k=2, class_names=names, head=head,
                              pooled_dim=staged.pooled_dim)
    features = rng.standard_normal((4, staged.feature_dim)).astype("float32")
    expected = features[:, :staged.pooled_dim] @ head[0]
    np.testing.assert_allclose(prior.logits(features).numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="reads"):  # without pooled_dim the shapes disagree
        build_class_prior("tiny", staged.feature_dim, text, top_k=2, class_names=names, head=head)


def test_init_checkpoints_refuse_the_extra_features():
    config = run_config.get_preset("lit")
    config.finetune.init = "clip_vit_base_patch16"
    with pytest.raises(InvalidArgumentError, match="--image-feature-stages and --text-feature-layers"):
        trainer.build_towers(config, CAPTIONS)


RELOAD = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401
model = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
print(json.dumps({"image": model.encode_image(tf.constant(images)).numpy().tolist(),
                  "text": model.encode_text(tf.constant(json.loads(sys.argv[3]))).numpy().tolist()}))
"""


def test_a_model_on_the_richer_features_reloads_in_a_fresh_process_with_the_same_embeddings(vocabulary, tmp_path):
    image = towers.build_image_tower("tiny", weights=None, image_size=32, feature_stages=2)
    text = towers.build_text_tower("tiny", pretrained=False, sequence_length=12, vocabulary=vocabulary, feature_layers=1)
    model = DualEncoder(image.model, text.model, text.preprocessor, image_size=image.image_size, resize=image.resize,
                        projection_dim=8, head="linear")
    path = export_saved_model(model, str(tmp_path / "saved_model"))
    images = PIXELS.astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", RELOAD, path, str(tmp_path / "images.npy"), json.dumps(CAPTIONS)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["image"], model.embed_images({"images": tf.constant(images, tf.float32)}).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(out["text"], model.encode_texts(tf.constant(CAPTIONS)).numpy(), atol=1e-5)
    # And the tower rebuilt from its spec (as evaluation and WiSE-FT do) is the same tower.
    assert towers.from_spec(image.spec).feature_dim == image.feature_dim
    assert towers.from_spec(text.spec).feature_dim == text.feature_dim

"""Files written by the flat pre-move layout (tests/fixtures/pre_move, made at 7967e21) still load."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import towers
from dual_encoder.model import DualEncoder  # noqa: F401  (registers the class for keras.models.load_model)
from dual_encoder.training import feature_cache

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pre_move"
IMAGE_SIZE, SEQUENCE_LENGTH, SEED = 32, 16, 11  # as make_fixture.py built them


def expected() -> dict:
    return json.loads((FIXTURE / "expected.json").read_text())


def test_a_model_keras_written_before_the_move_loads_and_embeds_as_it_did():
    model = keras.models.load_model(FIXTURE / "model.keras")
    recorded = expected()
    images = np.load(FIXTURE / "images.npy").astype("float32")
    np.testing.assert_allclose(model.embed_images({"images": images}).numpy(), recorded["image_embeddings"], atol=1e-5)
    texts = tf.constant(recorded["texts"])
    np.testing.assert_allclose(model.encode_texts(texts).numpy(), recorded["text_embeddings"], atol=1e-5)


def test_importing_the_model_module_is_all_load_model_needs_in_a_fresh_process():
    script = ("import sys, keras, numpy as np, dual_encoder.model\n"
              "model = keras.models.load_model(sys.argv[1])\n"
              "print(model.embed_images({'images': np.load(sys.argv[2]).astype('float32')}).numpy()[0, 0])")
    out = subprocess.run([sys.executable, "-c", script, str(FIXTURE / "model.keras"), str(FIXTURE / "images.npy")],
                         capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) == pytest.approx(expected()["image_embeddings"][0][0], abs=1e-5)


def test_a_feature_cache_written_before_the_move_is_reused_not_recomputed(tmp_path):
    recorded = expected()
    shards = tmp_path / "shards"
    shutil.copytree(FIXTURE / "shards", shards)
    keras.utils.set_random_seed(SEED)
    image = towers.build_image_tower("tiny", weights=None, image_size=IMAGE_SIZE)
    vocabulary = towers.build_vocabulary(recorded["captions"], size=80)
    assert vocabulary == recorded["vocabulary"]
    text = towers.build_text_tower("tiny", sequence_length=SEQUENCE_LENGTH, vocabulary=vocabulary)
    for tower in (image, text):
        towers.freeze(tower.model, False)
    cache = feature_cache.FeatureCache(image, text)
    assert cache.folders == recorded["feature_folders"]
    files = [str(shards / "train-00000-of-00001.tfrecord")]
    report = cache.extract(files, progress=False)
    assert (report.reused, report.computed, report.rebuilt) == (2, 0, {})
    features = cache.load(files)
    assert features.image_features.shape == (8, image.feature_dim)
    assert features.caption_counts.sum() == len(recorded["captions"])

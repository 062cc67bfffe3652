"""Identical captions on different images: keys, counts, the loss mask, and both pipelines."""

import collections
import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import towers, training
from dual_encoder.data import caption_keys, pipeline
from dual_encoder.data.records import ImageRecord
from dual_encoder.data.tfrecords import list_shards
from dual_encoder.model import losses
from dual_encoder.testing import tiny_config, write_shard
from dual_encoder.training import feature_cache

SHARED = "A dog runs through the grass ."  # on two images, written two ways
CAPTIONS = {"img-a": [SHARED, "a brown dog outside"], "img-b": ["a  DOG runs through the grass!", "grass and a dog"],
            "img-c": ["a red car on a street", "a car parked"]}


def keys(texts):
    return caption_keys.caption_keys(tf.constant(texts)).numpy()


def test_case_spaces_and_trailing_punctuation_do_not_make_another_caption():
    same = keys([SHARED, "a dog runs through the grass", "A DOG  runs through\tthe grass!!", " a dog runs through the grass. "])
    assert len(set(same.tolist())) == 1
    others = keys([SHARED, "A dog runs through the grass slowly", "A cat runs through the grass", "dog runs through the grass"])
    assert len(set(others.tolist())) == 4


def test_the_report_counts_captions_repeated_on_another_image_only():
    images = ["a", "a", "b", "b", "c", "c", "d"]
    texts = ["a dog", "A dog.", "a dog", "a cat", "a bird", "a bird", "a cat!"]  # a dog twice on a: not shared
    report = caption_keys.duplicate_report(np.array(images), keys(texts))
    assert report == {"captions": 7, "images": 4, "captions_shared_with_another_image": 5, "distinct_shared_captions": 2,
                      "images_with_a_shared_caption": 3}
    assert caption_keys.duplicate_report(np.array(["a", "b"]), keys(["x", "y"]))["captions_shared_with_another_image"] == 0


def _loss(fn, ids):
    rng = np.random.default_rng(0)
    image, text = (tf.math.l2_normalize(tf.constant(rng.normal(size=(4, 8)), tf.float32), axis=-1) for _ in range(2))
    ids = tf.constant(ids, tf.int64)
    return float(fn(image, text, image, text, ids, ids, 0, 10.0)[0])


@pytest.mark.parametrize("fn", [losses.infonce, losses.siglip])
def test_a_shared_caption_is_masked_as_a_shared_image_is(fn):
    """Pairs 0 and 1 show different images with one caption: keyed by (image, caption) they are
    treated as pairs of one image, and unlike pairs that share nothing."""
    by_caption = _loss(fn, [[10, 7], [11, 7], [12, 8], [13, 9]])
    assert by_caption == pytest.approx(_loss(fn, [10, 10, 12, 13]), abs=1e-6)
    assert abs(by_caption - _loss(fn, [10, 11, 12, 13])) > 1e-3


def _records():
    rng = np.random.default_rng(1)
    return [ImageRecord(image_id=i, image=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), captions=c, source="test")
            for i, c in CAPTIONS.items()]


def test_both_pipelines_give_the_shared_caption_one_key(tmp_path):
    shard = write_shard(tmp_path / "train-00000-of-00001.tfrecord", _records())
    config = pipeline.PipelineConfig(batch_size=6, captions_per_image=2, shuffle=False, deterministic=True)
    raw = next(iter(pipeline.pair_dataset([shard], (16, 16), lambda t: {"texts": t}, config)))
    expected = keys([c for caps in CAPTIONS.values() for c in caps])
    np.testing.assert_array_equal(raw["caption_keys"].numpy(), expected)
    assert raw["caption_keys"].numpy()[0] == raw["caption_keys"].numpy()[2]
    off = pipeline.PipelineConfig(batch_size=6, captions_per_image=2, shuffle=False, deterministic=True,
                                  mask_duplicate_captions=False)
    assert "caption_keys" not in next(iter(pipeline.pair_dataset([shard], (16, 16), lambda t: {"texts": t}, off)))

    keras.utils.set_random_seed(0)
    image = towers.build_image_tower("tiny", weights=None, image_size=16)
    text = towers.build_text_tower("tiny", sequence_length=8, vocabulary=towers.build_vocabulary(expected.astype(str), 20))
    cache = feature_cache.FeatureCache(image, text)
    cache.extract([shard], progress=False)
    cached = next(iter(feature_cache.pair_dataset(cache.load([shard]), config)))
    np.testing.assert_array_equal(cached["caption_keys"].numpy(), expected)

    # a cache file written before caption keys were stored: the keys come from the shard's captions
    path = cache.paths(shard)["text"]
    arrays = feature_cache.load_shard(path, shard)
    feature_cache.save_shard(path, {k: v for k, v in arrays.items() if k != "caption_keys"}, shard,
                             feature_cache.shard_fingerprint(shard))
    older = feature_cache.FeatureCache(image, text)
    assert "caption_keys" not in feature_cache.load_shard(path, shard)
    np.testing.assert_array_equal(older.load([shard]).caption_keys, expected)


def test_train_reports_the_shared_captions_and_can_keep_them_as_negatives(tmp_path, shard_dir):
    """The generated sample repeats its templates across images: counted as a plain-Python
    reading of the rule counts them, and masked unless --no-mask-duplicate-captions."""
    images = collections.defaultdict(set)
    for image_id, captions in pipeline.image_caption_lists(list_shards([shard_dir], "train")):
        for caption in captions:
            images[re.sub(r"[\s.!?,;:'\"]+$", "", re.sub(r"\s+", " ", caption.lower())).strip()].add(image_id)
    shared = {text for text, where in images.items() if len(where) > 1}
    losses_seen = {}
    for masked in (True, False):
        config = tiny_config(epochs=1)
        config.data.mask_duplicate_captions = masked
        results = training.train(config, shard_dir, tmp_path / f"run-{masked}", verbose=0, export=False)
        report = results["data"]["duplicate_captions"]
        assert json.loads((tmp_path / f"run-{masked}" / "results.json").read_text())["data"]["duplicate_captions"] == report
        assert report["masked"] is masked and report["captions"] == 450 * 5
        assert report["distinct_shared_captions"] == len(shared) > 0
        assert report["images_with_a_shared_caption"] == len(set().union(*(images[t] for t in shared)))
        losses_seen[masked] = results["final"]["loss"]
    assert losses_seen[True] != pytest.approx(losses_seen[False], abs=1e-4)

"""Augmented views in the feature cache: K crop/flip views per image stored once, one sampled per epoch."""

import collections
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import config as run_config
from dual_encoder import towers, training
from dual_encoder.data import pipeline, schema
from dual_encoder.data.augment import ViewAugmentation
from dual_encoder.data.records import SkipCounter
from dual_encoder.data.sample import sample_records
from dual_encoder.data.tfrecords import write_shards
from dual_encoder.errors import InvalidArgumentError
from dual_encoder.testing import write_shard
from dual_encoder.training import feature_cache

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def records():
    return sample_records(num_images=12, image_size=48, seed=5)


@pytest.fixture(scope="module")
def frozen_towers(records):
    keras.utils.set_random_seed(3)
    image = towers.build_image_tower("tiny", weights=None, image_size=IMAGE_SIZE)
    vocabulary = towers.build_vocabulary([c for r in records for c in r.captions], size=200)
    text = towers.build_text_tower("tiny", sequence_length=16, vocabulary=vocabulary)
    for tower in (image, text):
        towers.freeze(tower.model, False)
    return image, text


def _photo(seed=0, size=(40, 56)):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, (*size, 3)), tf.uint8)


def test_a_view_is_fixed_by_seed_image_and_view_number():
    augmentation = ViewAugmentation(views=4, min_scale=0.3, seed=1)
    photo, image_hash = _photo(), tf.constant(123456789, tf.int64)
    views = augmentation.views_of(photo, image_hash, (IMAGE_SIZE, IMAGE_SIZE)).numpy()
    assert views.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and views.dtype == np.float32
    assert 0 <= views.min() and views.max() <= 255
    np.testing.assert_array_equal(augmentation.views_of(photo, image_hash, (IMAGE_SIZE, IMAGE_SIZE)).numpy(), views)
    assert len({v.tobytes() for v in views}) == 4  # four different views
    other_image = augmentation.views_of(photo, tf.constant(7, tf.int64), (IMAGE_SIZE, IMAGE_SIZE)).numpy()
    other_seed = ViewAugmentation(views=4, min_scale=0.3, seed=2).views_of(photo, image_hash, (IMAGE_SIZE, IMAGE_SIZE))
    assert not np.array_equal(other_image, views) and not np.array_equal(other_seed.numpy(), views)
    plain = pipeline.resize_image(photo, (IMAGE_SIZE, IMAGE_SIZE)).numpy()
    assert not any(np.allclose(v, plain) for v in views)  # cropped or mirrored, never the plain image


def test_full_scale_views_without_flip_are_the_plain_image_and_flip_mirrors_half():
    photo = _photo(1)
    plain = pipeline.resize_image(photo, (IMAGE_SIZE, IMAGE_SIZE)).numpy()
    same = ViewAugmentation(views=3, min_scale=1.0, flip=False).views_of(photo, tf.constant(5, tf.int64), (32, 32))
    for view in same.numpy():  # the whole image at aspect 56/40 is outside 3/4..4/3: the fallback is the whole image
        np.testing.assert_allclose(view, plain, atol=1e-4)
    flipped = ViewAugmentation(views=16, min_scale=1.0, flip=True).views_of(photo, tf.constant(5, tf.int64), (32, 32))
    mirrored = sum(np.allclose(v, plain[:, ::-1], atol=1e-4) for v in flipped.numpy())
    assert 3 <= mirrored <= 13 and mirrored + sum(np.allclose(v, plain, atol=1e-4) for v in flipped.numpy()) == 16


def test_bad_settings_are_refused():
    with pytest.raises(InvalidArgumentError, match="views"):
        ViewAugmentation(views=-1)
    with pytest.raises(InvalidArgumentError, match="area"):
        ViewAugmentation(views=2, min_scale=0)


def test_the_cache_stores_k_views_per_training_image_and_a_new_augmentation_gets_new_views(frozen_towers, records, tmp_path):
    image, text = frozen_towers
    train = write_shard(tmp_path / "train-00000-of-00001.tfrecord", records[:8])
    val = write_shard(tmp_path / "val-00000-of-00001.tfrecord", records[8:])
    augmentation = ViewAugmentation(views=3, seed=4)
    cache = feature_cache.FeatureCache(image, text, augmentation=augmentation)
    report = cache.extract([train, val], batch_size=8, progress=False, view_files=[train])
    assert report.computed == 5 and report.computed_rows == {"image": 12, "text": sum(len(r.captions) for r in records),
                                                            "views": 8 * 3}
    views_file = cache.paths(train, views=True)["views"]
    assert os.path.basename(os.path.dirname(views_file)).startswith("views-") and os.path.exists(views_file)
    assert not os.path.exists(cache.paths(val, views=True)["views"])  # validation images get no views

    features = cache.load([train], views=True)
    assert features.image_views.shape == (8, 3, image.feature_dim)
    assert cache.load([train]).image_views is None
    # Each stored view is the tower's features of that view's pixels.
    example = list(pipeline.read_examples([train], pipeline.PipelineConfig(shuffle=False, deterministic=True)).take(3))[-1]
    image_hash = pipeline.hash_image_ids(example[schema.IMAGE_ID])
    photo = tf.io.decode_jpeg(example[schema.IMAGE], channels=3)
    pixels = augmentation.views_of(photo, image_hash, image.image_size, image.resize)
    expected = image.model(pixels, training=False).numpy()
    row = int(np.flatnonzero(features.image_ids == image_hash.numpy())[0])
    np.testing.assert_allclose(features.image_views[row], expected, atol=1e-5)
    assert not np.allclose(features.image_views[row, 0], features.image_features[row], atol=1e-3)

    again = feature_cache.FeatureCache(image, text, augmentation=ViewAugmentation(views=3, seed=4))
    assert again.extract([train, val], progress=False, view_files=[train]).computed == 0  # reused
    for changed in (ViewAugmentation(views=2, seed=4), ViewAugmentation(views=3, seed=4, min_scale=0.8),
                    ViewAugmentation(views=3, seed=5), ViewAugmentation(views=3, seed=4, flip=False)):
        other = feature_cache.FeatureCache(image, text, augmentation=changed)
        assert other.folders["views"] != cache.folders["views"] and other.folders["image"] == cache.folders["image"]
        report = other.extract([train, val], progress=False, view_files=[train])
        assert report.computed == 1 and report.reused == 4  # only the views, computed again
        assert other.load([train], views=True).image_views.shape[1] == changed.views


def _features_with_views(views=3):
    counts = np.array([3, 2, 4, 1, 3])
    n = len(counts)
    return feature_cache.CachedFeatures(
        image_features=np.arange(n, dtype=np.float32)[:, None] * 10,
        image_ids=np.arange(n, dtype=np.int64), text_features=np.arange(counts.sum(), dtype=np.float32)[:, None],
        caption_counts=counts, shard_sizes=[n],
        image_views=(np.arange(n)[:, None, None] * 10 + np.arange(1, views + 1)[None, :, None]).astype(np.float32))


def test_each_epoch_samples_one_row_per_image_the_same_for_all_its_pairs():
    features = _features_with_views(views=3)  # image i: plain row 10 i, its views 10 i + 1..3
    config = pipeline.PipelineConfig(batch_size=4, captions_per_image=3, seed=2)

    def epochs(n):
        ds = feature_cache.pair_dataset(features, config)
        out = []
        for _ in range(n):
            seen = collections.defaultdict(set)
            for batch in ds.as_numpy_iterator():
                for row, image in zip(batch["image_features"][:, 0], batch["image_ids"]):
                    seen[int(image)].add(int(row))
            out.append(seen)
        return out

    runs = epochs(8)
    for seen in runs:
        assert set(seen) == set(range(5)) and all(len(rows) == 1 for rows in seen.values())  # one view per image
        assert all(next(iter(rows)) // 10 == image for image, rows in seen.items())  # a row of its own image
    drawn = {(image, next(iter(rows)) % 10) for seen in runs for image, rows in seen.items()}
    assert {view for _, view in drawn} == {0, 1, 2, 3}  # the plain row and every view get drawn
    assert [dict(s) for s in epochs(8)] == [dict(s) for s in runs]  # deterministic under the seed

    validation = feature_cache.pair_dataset(features, pipeline.PipelineConfig(batch_size=4, shuffle=False,
                                                                                deterministic=True))
    rows = np.concatenate([b["image_features"][:, 0] for b in validation.as_numpy_iterator()])
    assert set(rows % 10) == {0}  # validation reads the plain features only


def _frozen_config(views):
    config = run_config.get_preset("sample")
    config.model.image_size = IMAGE_SIZE
    config.model.projection_dim = 16
    config.model.train_image_tower = config.model.train_text_tower = False
    config.train.epochs, config.train.batch_size = 1, 8
    config.data.augment_views = views
    return config


def test_training_with_augment_views(records, tmp_path):
    shard_dir = tmp_path / "shards"
    write_shards(records, str(shard_dir), source_info={"type": "sample"}, skipped=SkipCounter(), val_fraction=0.25, seed=0,
                 images_per_shard=6, progress=False)
    results = training.train(_frozen_config(2), [str(shard_dir)], tmp_path / "run", verbose=0, export=False)
    cache = results["feature_cache"]
    assert cache["augmentation"]["views"] == 2 and cache["computed_rows"]["views"] == 2 * 9
    assert sum(os.path.basename(f).startswith("views-") for f in cache["folders"]) == 1
    assert results["epochs_run"] == 1 and np.isfinite(results["final"]["loss"])

    config = _frozen_config(2)
    config.model.train_image_tower = True
    with pytest.raises(InvalidArgumentError, match="--augment-views"):
        training.train(config, [str(shard_dir)], tmp_path / "trained-tower", verbose=0, export=False)

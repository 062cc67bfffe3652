"""Feature cache: pairs as the uncached pipeline, the same losses, resume, corruption, keys, train()."""

import collections
import dataclasses
import json
import os
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import config as run_config
from dual_encoder import towers, training
from dual_encoder.data import pipeline
from dual_encoder.data.records import SkipCounter
from dual_encoder.data.sample import sample_records
from dual_encoder.data.tfrecords import write_shards
from dual_encoder.model import DualEncoder
from dual_encoder.testing import write_shard
from dual_encoder.towers import features as text_features
from dual_encoder.towers import text as text_towers
from dual_encoder.training import feature_cache

IMAGE_SIZE, SEQUENCE_LENGTH = 32, 16


@pytest.fixture(scope="module")
def records():
    return sample_records(num_images=40, image_size=IMAGE_SIZE, seed=7)


@pytest.fixture(scope="module")
def frozen_towers(records):
    keras.utils.set_random_seed(3)
    image = towers.build_image_tower("tiny", weights=None, image_size=IMAGE_SIZE)
    vocabulary = towers.build_vocabulary([c for r in records for c in r.captions], size=200)
    text = towers.build_text_tower("tiny", sequence_length=SEQUENCE_LENGTH, vocabulary=vocabulary)
    for tower in (image, text):
        towers.freeze(tower.model, False)
    return image, text


def shards(folder, records, sizes):
    """Shards of uneven sizes, so the unshuffled read order interleaves them."""
    files, start = [], 0
    for i, size in enumerate(sizes):
        files.append(write_shard(folder / f"train-{i:05d}-of-{len(sizes):05d}.tfrecord", records[start : start + size]))
        start += size
    return files


def test_pairs_sample_k_captions_per_image_anew_each_epoch():
    counts = np.array([5, 1, 3, 2, 0, 4])
    features = feature_cache.CachedFeatures(
        image_features=np.arange(6, dtype=np.float32)[:, None], image_ids=np.arange(6, dtype=np.int64) * 10,
        text_features=np.arange(counts.sum(), dtype=np.float32)[:, None], caption_counts=counts, shard_sizes=[6])
    owner = np.repeat(np.arange(6), counts)
    config = pipeline.PipelineConfig(batch_size=4, captions_per_image=3, seed=1)

    def epochs(n):
        tf.random.set_seed(0)
        ds = feature_cache.pair_dataset(features, config)
        assert ds.cardinality() == 3  # 3 + 1 + 3 + 2 + 0 + 3 = 12 pairs in batches of 4
        assert ds.options().autotune.enabled is False  # deleting an autotuned iterator stalled epochs by seconds
        out = []
        for _ in range(n):
            batches = list(ds.as_numpy_iterator())
            out.append([(int(i), int(c), int(d)) for b in batches
                        for i, c, d in zip(b["image_features"][:, 0], b["text_features"][:, 0], b["image_ids"])])
        return out

    runs = epochs(3)
    for pairs in runs:
        by_image = collections.defaultdict(list)
        for image, caption, image_id in pairs:
            assert owner[caption] == image and image_id == 10 * image  # caption of its image, hashed id of it
            by_image[image].append(caption)
        assert {i: len(c) for i, c in by_image.items()} == {0: 3, 1: 1, 2: 3, 3: 2, 5: 3}
        assert all(len(set(c)) == len(c) for c in by_image.values())  # without replacement
    assert runs[0] != runs[1] and runs[1] != runs[2]  # captions and order resampled each epoch
    assert epochs(3) == runs  # the same seed gives the same epochs


def _step_losses(model, dataset, epochs=2):
    losses = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
    history = model.fit(dataset, epochs=epochs, verbose=0, callbacks=[record])
    return losses, history.history["loss"]


def test_cached_features_train_exactly_as_recomputing_them(frozen_towers, records, tmp_path):
    image, text = frozen_towers
    files = shards(tmp_path, records, [24, 16])
    config = pipeline.PipelineConfig(batch_size=8, captions_per_image=3, shuffle=False, deterministic=True)
    cache = feature_cache.FeatureCache(image, text)
    cache.extract(files, batch_size=16, progress=False)
    features = cache.load(files)
    recomputed = pipeline.pair_dataset(files, image.image_size, text.preprocessor, config, image.resize)
    # A dataset of unknown length makes keras end each epoch with a failed step that still applies
    # AdamW's weight decay and advances the dropout seeds; the cached one declares its length.
    recomputed = recomputed.apply(tf.data.experimental.assert_cardinality(15))  # 40 images x 3 captions / 8
    runs = {}
    for name, dataset in {"recomputed": recomputed, "cached": feature_cache.pair_dataset(features, config)}.items():
        keras.utils.set_random_seed(11)  # the same heads, dropout masks included
        model = DualEncoder(image.model, text.model, text.preprocessor, image_size=image.image_size, projection_dim=16,
                            head="mlp", dropout=0.1)
        model.compile(optimizer=keras.optimizers.AdamW(1e-2))
        ids = np.concatenate([b["image_ids"] for b in dataset.as_numpy_iterator()])
        runs[name] = ids, *_step_losses(model, dataset)
    (ids, steps, epochs), (cached_ids, cached_steps, cached_epochs) = runs["recomputed"], runs["cached"]
    np.testing.assert_array_equal(cached_ids, ids)  # same pairs in the same order, shards interleaved
    assert len(steps) == 2 * 15
    np.testing.assert_allclose(cached_steps, steps, atol=1e-5, rtol=0)
    np.testing.assert_allclose(cached_epochs, epochs, atol=1e-5, rtol=0)
    assert epochs[1] < epochs[0]  # it did learn something


def test_the_validation_split_embeds_from_the_cache_as_through_the_towers(frozen_towers, records, tmp_path):
    image, text = frozen_towers
    files = shards(tmp_path, records, [7, 5])  # two shards: the cached rows must keep the towers' order
    cache = feature_cache.FeatureCache(image, text)
    cache.extract(files, batch_size=4, progress=False)
    keras.utils.set_random_seed(5)
    model = DualEncoder(image.model, text.model, text.preprocessor, image_size=image.image_size, projection_dim=16,
                        head="mlp", dropout=0.1)
    towers_run = training.trainer.embed_split(model, files, batch_size=4)
    cached_run = training.trainer.embed_cached_split(model, cache.load(files), batch_size=5)
    np.testing.assert_array_equal(cached_run[2], towers_run[2])  # each caption's image
    assert cached_run[0].shape == (12, 16) and cached_run[1].shape == (sum(len(r.captions) for r in records[:12]), 16)
    for cached, computed in zip(cached_run[:2], towers_run[:2]):
        np.testing.assert_allclose(cached, computed, atol=1e-5)


def test_interrupted_extraction_resumes_and_broken_files_are_rebuilt(frozen_towers, records, tmp_path, monkeypatch):
    image, text = frozen_towers
    files = shards(tmp_path, records[:16], [8, 8])
    save, saved = feature_cache.save_shard, []

    def crash_after_first_shard(path, *args, **kwargs):
        if len(saved) == 2:
            raise KeyboardInterrupt
        save(path, *args, **kwargs)
        saved.append(path)

    monkeypatch.setattr(feature_cache, "save_shard", crash_after_first_shard)
    with pytest.raises(KeyboardInterrupt):  # one tower after the other, so the files saved are known
        feature_cache.FeatureCache(image, text, concurrent_towers=False).extract(files, progress=False)
    monkeypatch.undo()
    cache = feature_cache.FeatureCache(image, text)  # a new process would start like this
    first, second = cache.paths(files[0]), cache.paths(files[1])
    assert saved == [first["image"], first["text"]]
    stamps = {kind: os.stat(path).st_mtime_ns for kind, path in first.items()}
    folder = os.path.dirname(first["image"])
    stale, running = second["image"] + ".tmp-0123456789ab", second["text"] + ".tmp-ba9876543210"
    for path in (stale, running):
        open(path, "wb").write(b"torn")
    os.utime(stale, (time.time() - 7200,) * 2)  # what a kill -9 mid-write left two hours ago

    report = cache.extract(files, progress=False)
    assert (report.reused, report.computed, report.rebuilt) == (2, 2, {})
    assert report.computed_rows == {"image": 8, "text": sum(len(r.captions) for r in records[8:16])}
    assert {kind: os.stat(path).st_mtime_ns for kind, path in first.items()} == stamps  # kept, not rewritten
    assert sorted(os.listdir(folder)) == ["tower.json", "train-00000-of-00002.npz", "train-00001-of-00002.npz"]
    assert os.path.exists(running)  # young: perhaps another worker's write in progress
    expected = cache.load(files)
    assert expected.shard_sizes == [8, 8] and expected.caption_counts.sum() == len(expected.text_features)

    with open(first["text"], "r+b") as f:  # a torn file
        f.truncate(os.path.getsize(first["text"]) // 2)
    with pytest.raises(FileNotFoundError, match="unreadable"):
        feature_cache.FeatureCache(image, text).load(files)
    write_shard(files[1], records[16:24])  # a shard rewritten with other images: its features are stale
    cache = feature_cache.FeatureCache(image, text)
    report = cache.extract(files, progress=False)
    assert report.computed == 3 and sorted(report.rebuilt) == sorted([first["text"], *second.values()])
    assert "unreadable" in report.rebuilt[first["text"]] and "changed" in report.rebuilt[second["text"]]
    features = cache.load(files)
    first_captions = expected.caption_counts[:8].sum()  # shard 0's, recomputed from its torn file
    np.testing.assert_allclose(features.text_features[:first_captions], expected.text_features[:first_captions], atol=1e-6)
    np.testing.assert_array_equal(features.image_ids[:8], expected.image_ids[:8])
    assert not np.isin(features.image_ids[8:], expected.image_ids).any()


def test_the_text_tower_runs_beside_the_image_tower_with_the_same_features(frozen_towers, records, tmp_path,
                                                                          monkeypatch):
    image, text = frozen_towers
    threads, text_arrays = collections.defaultdict(set), feature_cache._text_arrays
    image_arrays = feature_cache._image_arrays

    def in_thread(kind, compute):
        def run(*args, **kwargs):
            threads[kind].add(threading.current_thread().name)
            return compute(*args, **kwargs)
        return run

    monkeypatch.setattr(feature_cache, "_text_arrays", in_thread("text", text_arrays))
    monkeypatch.setattr(feature_cache, "_image_arrays", in_thread("image", image_arrays))
    loaded, reports = {}, {}
    for concurrent in (False, True):
        (tmp_path / str(concurrent)).mkdir()
        files = shards(tmp_path / str(concurrent), records, [24, 16])
        cache = feature_cache.FeatureCache(image, text, concurrent_towers=concurrent)
        reports[concurrent] = cache.extract(files, batch_size=8, progress=False)
        loaded[concurrent] = cache.load(files)
    assert threads == {"image": {"MainThread"}, "text": {"MainThread", "text tower features"}}
    assert (reports[False].concurrent_towers, reports[True].concurrent_towers) == (False, True)
    for report in reports.values():
        assert report.computed == 4 and report.computed_rows == reports[False].computed_rows
        assert report.length_buckets == reports[False].length_buckets
    for name in ("image_features", "text_features", "image_ids", "caption_counts"):
        np.testing.assert_array_equal(getattr(loaded[True], name), getattr(loaded[False], name))

    def broken(*args, **kwargs):
        raise ValueError("the text tower failed")

    monkeypatch.setattr(feature_cache, "_text_arrays", broken)
    (tmp_path / "broken").mkdir()
    files = shards(tmp_path / "broken", records, [24, 16])
    with pytest.raises(ValueError, match="the text tower failed"):  # raised here, not lost in the thread
        feature_cache.FeatureCache(image, text).extract(files, progress=False)


def test_a_new_tower_or_preprocessing_gets_a_new_folder(records):
    def image_folder(seed, size=IMAGE_SIZE):
        keras.utils.set_random_seed(seed)
        return feature_cache.folder_name(towers.build_image_tower("tiny", weights=None, image_size=size))

    first = image_folder(1)
    assert first.startswith("image-tiny-")
    assert image_folder(1) == first  # random weights, but the same ones: reused across processes
    assert image_folder(2) != first  # other random weights never read these features
    assert image_folder(1, size=48) != first
    vocabulary = towers.build_vocabulary([c for r in records for c in r.captions], size=200)

    def text_folder(length):
        keras.utils.set_random_seed(1)
        return feature_cache.folder_name(towers.build_text_tower("tiny", sequence_length=length, vocabulary=vocabulary))

    assert text_folder(16) == text_folder(16) != text_folder(8)  # the sequence length is part of the key


def test_batch_length():
    assert text_features.batch_length(14, 64) == 14 and text_features.batch_length(90, 64) == 64
    assert text_features.batch_length(0, 64) == 1


@pytest.mark.parametrize("pooling, feature_layers", [("mean", 0), ("cls", 0), ("mean", 1)])  # 1: lit's mid-level features
def test_captions_by_length_bucket_give_the_full_length_features_and_the_same_cache(records, tmp_path, pooling,
                                                                                     feature_layers, monkeypatch):
    rng = np.random.default_rng(0)
    words = [c for r in records for c in r.captions]
    varied = [dataclasses.replace(r, captions=[" ".join(rng.choice(words, n)) for n in (1, 3, 6, 12)])  # ~8..90 tokens
              for r in records[:12]]
    monkeypatch.setattr(text_towers, "TINY_TEXT", dataclasses.replace(text_towers.TINY_TEXT, pooling=pooling))
    keras.utils.set_random_seed(3)
    image = towers.build_image_tower("tiny", weights=None, image_size=IMAGE_SIZE)
    text = towers.build_text_tower("tiny", sequence_length=64, vocabulary=towers.build_vocabulary(words, size=200),
                                   feature_layers=feature_layers)
    for tower in (image, text):
        towers.freeze(tower.model, False)
    assert text_features.pools_with_padding_mask(text)
    out = {}
    for buckets in (True, False):
        (tmp_path / str(buckets)).mkdir()
        files = shards(tmp_path / str(buckets), varied, [7, 5])
        cache = feature_cache.FeatureCache(image, text, length_buckets=buckets)
        report = cache.extract(files, batch_size=8, progress=False)
        out[buckets] = cache, report, cache.load(files)
    (cache, report, bucketed), (full_cache, full_report, full) = out[True], out[False]
    assert cache.folders == full_cache.folders  # the same key: either reads the other's files
    lengths = text_features.TextFeatures(text).tokens([c for r in varied for c in r.captions])["padding_mask"].sum(axis=1)
    expected = collections.Counter()  # per shard: batches of 8 captions sorted by length, each at its longest
    for shard_lengths in (lengths[: 7 * 4], lengths[7 * 4 :]):
        ordered = np.sort(shard_lengths)
        for start in range(0, len(ordered), 8):
            expected[int(ordered[start : start + 8].max())] += len(ordered[start : start + 8])
    assert report.length_buckets == dict(expected) and len(expected) >= 4
    assert lengths.max() == 64  # some captions truncated
    assert full_report.length_buckets == {64: len(lengths)}
    assert cache._forwards["text"].verified and cache._forwards["text"].max_difference <= 1e-5
    np.testing.assert_allclose(bucketed.text_features, full.text_features, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(bucketed.caption_counts, full.caption_counts)
    np.testing.assert_array_equal(bucketed.image_features, full.image_features)
    reference = text.model(text.preprocessor(tf.constant([c for r in varied for c in r.captions])), training=False)
    np.testing.assert_allclose(bucketed.text_features, reference, atol=1e-5, rtol=0)  # as the model computes them


def test_bucketing_falls_back_to_the_full_length_where_padding_changes_the_features(records, monkeypatch):
    vocabulary = towers.build_vocabulary([c for r in records for c in r.captions], size=200)
    text = towers.build_text_tower("tiny", sequence_length=32, vocabulary=vocabulary)
    forward = text_features.TextFeatures._forward
    monkeypatch.setattr(text_features.TextFeatures, "_forward",  # as if the features saw the padding
                        lambda self, length, tokens: forward(self, min(length, 16), tokens) + length)
    features = text_features.TextFeatures(text)
    assert features.by_length
    captions = [c for r in records[:4] for c in r.captions]
    out = features(captions, batch_size=4)
    assert not features.by_length and features.max_difference >= 16  # the first batch ran at 16 tokens or fewer
    np.testing.assert_allclose(out, forward(features, 16, features.tokens(captions)) + 32, atol=1e-6)


def _frozen_config(epochs=1):
    config = run_config.get_preset("sample")
    config.model.image_size = IMAGE_SIZE
    config.model.projection_dim = 16
    config.model.train_image_tower = config.model.train_text_tower = False
    config.train.epochs, config.train.batch_size = epochs, 16
    return config


@pytest.fixture(scope="module")
def shard_dir(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("frozen_shards")
    write_shards(records, str(out), source_info={"type": "sample"}, skipped=SkipCounter(), val_fraction=0.25, seed=0,
                 images_per_shard=15, progress=False)
    return out


def test_train_with_frozen_towers_caches_the_features_next_to_the_shards(shard_dir, tmp_path):
    results = training.train(_frozen_config(), [str(shard_dir)], tmp_path, verbose=0, export=False)
    cache = results["feature_cache"]
    assert cache["used"] and cache["stored"] and cache["extraction_seconds"] > 0
    assert cache["files_computed"] + cache["files_reused"] == 2 * 3  # 2 towers x (2 train + 1 val shards)
    assert [os.path.dirname(f) for f in cache["folders"]] == [str(shard_dir / "features")] * 2
    assert json.loads((tmp_path / "results.json").read_text())["feature_cache"] == cache
    assert cache["jit_compile"]  # heads only: XLA
    assert results["epochs_run"] == 1 and "val_loss" in results["final"]
    assert results["retrieval"]["num_images"] == 10  # the val split, embedded from its cached features


def test_unwritable_shard_folder_keeps_the_features_in_memory(frozen_towers, records, tmp_path, monkeypatch):
    def refuse(self, folder):
        raise PermissionError(f"{folder}: read-only file system")

    monkeypatch.setattr(feature_cache.FeatureCache, "_start_folder", refuse)
    files = shards(tmp_path, records[:6], [6])
    cache = feature_cache.FeatureCache(*frozen_towers)
    report = cache.extract(files, progress=False)
    assert not report.stored and report.computed == 2 and not (tmp_path / feature_cache.FOLDER).exists()
    assert len(cache.load(files).image_ids) == 6


@pytest.mark.slow
def test_reruns_reuse_the_cache_opting_out_recomputes_and_export_keeps_the_towers(shard_dir, tmp_path):
    first = training.train(_frozen_config(), [str(shard_dir)], tmp_path / "first", verbose=0)
    again = training.train(_frozen_config(), [str(shard_dir)], tmp_path / "again", verbose=0, export=False)
    assert again["feature_cache"]["files_computed"] == 0 and again["feature_cache"]["files_reused"] == 6
    assert again["final"]["loss"] == pytest.approx(first["final"]["loss"], abs=1e-5)  # same seed, same run

    config = _frozen_config()
    config.data.feature_cache = False
    off = training.train(config, [str(shard_dir)], tmp_path / "off", verbose=0, export=False)
    assert off["feature_cache"] == {"used": False, "reason": "--no-feature-cache"}

    exported = tf.saved_model.load(first["outputs"]["saved_model"])
    files = [str(p) for p in sorted(shard_dir.glob("val-*.tfrecord"))]
    _, images = next(iter(pipeline.image_dataset(files, (IMAGE_SIZE, IMAGE_SIZE), batch_size=4)))
    embeddings = exported.encode_image(tf.cast(images, tf.uint8)).numpy()  # raw pixels: the towers are inside
    assert embeddings.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

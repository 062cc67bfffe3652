"""The tf.data pipeline: K pairs per image, same-image ids, resizing, tokenization in graph."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from dual_encoder.data import pipeline
from dual_encoder.data.records import ImageRecord
from dual_encoder.testing import write_shard


def _records():
    rng = np.random.default_rng(0)
    return [
        ImageRecord(f"img{i}", [f"caption {i} "
                                f"{j}" for j in range(n)], "test", image=rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
        for i, n in enumerate([5, 1, 3, 2])
    ]


def _identity_tokens(texts):
    return {"texts": texts}


def _pairs(ds):
    out = []
    for batch in ds:
        out += list(zip(batch["image_ids"].numpy(), [t.decode() for t in batch["tokens"]["texts"].numpy()]))
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_k_pairs_per_image_without_replacement(tmp_path, k):
    shard = write_shard(tmp_path / "train-00000-of-00001.tfrecord", _records())
    config = pipeline.PipelineConfig(batch_size=4, captions_per_image=k, seed=1)
    pairs = _pairs(pipeline.pair_dataset([shard], (32, 32), _identity_tokens, config))
    by_image = collections.defaultdict(list)
    for image_id, caption in pairs:
        by_image[image_id].append(caption)
    assert sorted(len(v) for v in by_image.values()) == sorted(min(k, n) for n in [5, 1, 3, 2])
    for captions in by_image.values():
        assert len(set(captions)) == len(captions)  # without replacement
        assert len({c.split()[1] for c in captions}) == 1  # every caption belongs to its image


def test_ids_are_stable_hashes_of_image_ids(tmp_path):
    shard = write_shard(tmp_path / "a.tfrecord", _records())
    config = pipeline.PipelineConfig(batch_size=16, captions_per_image=5, shuffle=False, deterministic=True)
    pairs = _pairs(pipeline.pair_dataset([shard], (32, 32), _identity_tokens, config))
    expected = pipeline.hash_image_ids(tf.constant(["img0"])).numpy()[0]
    assert [i for i, c in pairs if c.startswith("caption 0 ")] == [expected] * 5
    assert len({i for i, _ in pairs}) == 4


def test_images_resized_to_the_tower_size_in_0_255(tmp_path):
    shard = write_shard(tmp_path / "a.tfrecord", _records())
    config = pipeline.PipelineConfig(batch_size=3, captions_per_image=1, seed=0)
    batch = next(iter(pipeline.pair_dataset([shard], (24, 24), _identity_tokens, config)))
    images = batch["images"].numpy()
    assert images.shape == (3, 24, 24, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 255 and images.max() > 100


def test_crop_mode_keeps_the_aspect_ratio():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :16] = 255  # white strip on the far left: cropped away by a centre crop
    cropped = pipeline.resize_image(image, (20, 20), "crop").numpy()
    squashed = pipeline.resize_image(image, (20, 20), "squash").numpy()
    assert cropped[:, 0].mean() < 5 and squashed[:, 0].mean() > 250
    with pytest.raises(ValueError, match="squash"):
        pipeline.resize_image(image, (20, 20), "stretch")


def test_image_caption_lists_reads_everything(tmp_path):
    shard = write_shard(tmp_path / "a.tfrecord", _records())
    items = pipeline.image_caption_lists([shard])
    assert [i for i, _ in items] == ["img0", "img1", "img2", "img3"]
    assert items[2][1] == ["caption 2 0", "caption 2 1", "caption 2 2"]


def test_no_files_is_a_clear_error():
    with pytest.raises(ValueError, match="no shard"):
        pipeline.read_examples([], pipeline.PipelineConfig())

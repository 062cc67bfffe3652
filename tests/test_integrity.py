"""Damaged shards are found before anything reads them, named, and repairable by rewriting one shard."""

import os

from dual_encoder.data import integrity
from dual_encoder.data.records import SkipCounter
from dual_encoder.data.sample import sample_records
from dual_encoder.data.tfrecords import list_shards, write_shards


def write(folder):
    write_shards(sample_records(num_images=30, image_size=32, seed=2), str(folder), source_info={"type": "sample"},
                 skipped=SkipCounter(), val_fraction=0.2, seed=0, images_per_shard=8, progress=False)
    return list_shards([str(folder)], "train")


def flip_a_byte(path, position=0.5):
    data = bytearray(open(path, "rb").read())
    data[int(len(data) * position)] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_a_flipped_byte_is_found_and_named(tmp_path):
    shards = write(tmp_path / "shards")
    assert integrity.find_damaged_shards(shards) == {}
    flip_a_byte(shards[1])
    damaged = integrity.find_damaged_shards(shards)
    assert list(damaged) == [shards[1]] and "corrupted record" in damaged[shards[1]].lower()


def test_the_repair_hint_works_delete_the_shard_and_rerun_the_writer(tmp_path):
    folder = tmp_path / "shards"
    shards = write(folder)
    flip_a_byte(shards[0], position=0.9)
    damaged = integrity.find_damaged_shards(shards)
    hint = integrity.repair_hint(shards[0])
    assert shards[0] in damaged and hint.startswith(f"delete {shards[0]} and rerun")
    os.remove(shards[0])
    assert write(folder) == shards
    assert integrity.find_damaged_shards(shards) == {}

"""Damaged shards are found before anything reads them, named, and repairable by rewriting one shard."""

import logging
import os

import pytest

from dual_encoder import training
from dual_encoder.cli import evaluate
from dual_encoder.data import integrity
from dual_encoder.data.records import SkipCounter
from dual_encoder.data.sample import sample_records
from dual_encoder.data.tfrecords import list_shards, write_shards
from dual_encoder.evaluation import runs
from dual_encoder.testing import tiny_config


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


def test_training_names_a_damaged_shard_and_trains_on_the_intact_ones_when_asked(tmp_path, caplog):
    folder = tmp_path / "shards"
    shards = write(folder)
    flip_a_byte(shards[1])
    with pytest.raises(integrity.DamagedShardError, match=r"1 of \d+ shards are damaged.*--skip-damaged-shards"):
        training.train(tiny_config(epochs=1), [str(folder)], tmp_path / "run", verbose=0, export=False)
    config = tiny_config(epochs=1)
    config.data.skip_damaged_shards = True
    with caplog.at_level(logging.WARNING):
        results = training.train(config, [str(folder)], tmp_path / "run2", verbose=0, export=False)
    assert results["data"]["train_shards"] == len(shards) - 1 and shards[1] in caplog.text


def test_evaluation_names_a_damaged_shard_and_skips_it_when_asked(tmp_path, capsys):
    folder = tmp_path / "shards"
    write(folder)
    val = list_shards([str(folder)], "val")
    flip_a_byte(val[0])
    assert evaluate.main(["--model", str(tmp_path), "--shards", str(folder), "--split", "val"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: 1 of 1 shards are damaged") and val[0] in error and len(error.splitlines()) == 1
    records, info = runs.shard_records([str(folder)], "train", skip_damaged=True)
    assert len(records) == 24 and info["shards"]

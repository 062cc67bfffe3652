"""Checkpoints and the resume backup survive faults: a full disk, a torn write, a flipped byte."""

import contextlib
import errno
import logging
import shutil
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

from dual_encoder import training
from dual_encoder.cli import train as train_cli
from dual_encoder.errors import InvalidArgumentError
from dual_encoder.testing import tiny_config
from dual_encoder.training import checkpoints


def tiny_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer="adam", loss="mse")
    return model


def flip_a_byte(path: Path, position: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * position)] ^= 0xFF
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "64m", readonly: bool = False):
    """A real file system of `size` (a tmpfs) at `path`; skips where mounting is not allowed."""
    path.mkdir()
    options = f"size={size}" + (",ro" if readonly else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Fills `folder`'s file system up to `leave` free bytes."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * max(0, shutil.disk_usage(folder).free - leave))
    return filler


# --- weights files ------------------------------------------------------------------------------


def test_a_flipped_byte_hdf5_does_not_notice_is_caught_by_the_checksum(tmp_path):
    model = tiny_model()
    path = tmp_path / "w.weights.h5"
    checkpoints.save_weights(model, path, epoch=3)
    checkpoints.verify(path)
    assert checkpoints.recorded_epoch(path) == 3
    before = [w.copy() for w in model.get_weights()]
    kernel = model.layers[-1].kernel.numpy().astype("<f4").tobytes()
    data = path.read_bytes()
    at = data.index(kernel[:8])  # inside the kernel's raw data
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:])
    model.load_weights(str(path))  # HDF5 keeps no checksum of the data: the damage loads silently
    assert not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    with pytest.raises(checkpoints.DamagedCheckpointError, match=r"w\.weights\.h5 is damaged"):
        checkpoints.load_weights(model, path)


def test_a_write_that_fails_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    model = tiny_model()
    path = tmp_path / "last.weights.h5"
    checkpoints.save_weights(model, path, epoch=1)
    good = path.read_bytes()

    def torn_write(filepath, **kwargs):
        Path(filepath).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_weights", torn_write)
    with pytest.raises(checkpoints.DiskFullError, match=r"could not write .*last\.weights\.h5 \(No space left on device\)"):
        checkpoints.save_weights(model, path, epoch=2)
    assert path.read_bytes() == good and checkpoints.recorded_epoch(path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checksums.json", "last.weights.h5"]  # no temporary left


def test_no_checkpoint_is_started_without_room_for_it(tmp_path, monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(checkpoints.DiskFullError, match=r"not enough free space in .* to write w\.weights\.h5"):
        checkpoints.save_weights(model, tmp_path / "w.weights.h5")
    assert list(tmp_path.iterdir()) == []


# --- training runs ------------------------------------------------------------------------------


def test_train_refuses_wrong_types_and_an_output_dir_that_is_a_file(shard_dir, tmp_path):
    with pytest.raises(InvalidArgumentError, match="config must be a RunConfig"):
        training.train({"epochs": 1}, [shard_dir], tmp_path / "run")
    with pytest.raises(InvalidArgumentError, match="shard_dirs must be a folder or a list of folders"):
        training.train(tiny_config(), 42, tmp_path / "run")
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    with pytest.raises(InvalidArgumentError, match=r"--output-dir .*taken: is a file, not a folder"):
        training.train(tiny_config(), [shard_dir], a_file)


def test_a_read_only_output_dir_is_one_line_before_any_training(shard_dir, tmp_path, capsys):
    with small_filesystem(tmp_path / "ro", size="1m", readonly=True) as read_only:
        code = train_cli.main(["--tfrecords", shard_dir, "--preset", "sample", "--output-dir", str(read_only / "run"),
                               "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith("cannot write there (Read-only file system)")


@pytest.mark.slow
def test_a_full_disk_stops_training_with_one_line_and_keeps_the_last_good_checkpoint(shard_dir, tmp_path, capsys):
    args = ["--tfrecords", shard_dir, "--preset", "sample", "--image-size", "48", "--projection-dim", "32",
            "--batch-size", "32", "--quiet"]
    with small_filesystem(tmp_path / "disk") as disk:
        run = disk / "run"
        assert train_cli.main([*args, "--epochs", "1", "--output-dir", str(run)]) == 0
        filler = fill(disk, leave=64 * 1024)
        capsys.readouterr()
        assert train_cli.main([*args, "--epochs", "2", "--output-dir", str(run)]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: not enough free space in") and len(error.splitlines()) == 1
        for name in ("backup/latest.weights.h5", "checkpoints/last.weights.h5"):
            checkpoints.verify(run / name)
            assert checkpoints.recorded_epoch(run / name) == 1, name
        filler.unlink()  # space again: the same command finishes the run
        assert train_cli.main([*args, "--epochs", "2", "--output-dir", str(run)]) == 0
        assert checkpoints.recorded_epoch(run / "checkpoints" / "last.weights.h5") == 2


@pytest.mark.slow
def test_damaged_backups_and_checkpoints_are_named_and_what_is_intact_is_used(shard_dir, tmp_path, caplog):
    run = tmp_path / "run"
    training.train(tiny_config(epochs=1), [shard_dir], run, verbose=0, export=False)
    flip_a_byte(run / "backup" / "latest.weights.h5")
    flip_a_byte(run / "checkpoints" / "best.weights.h5")
    with caplog.at_level(logging.WARNING):
        results = training.train(tiny_config(epochs=2), [shard_dir], run, verbose=0, export=False)
    assert results["epochs_run"] == 2 and results["epochs_this_call"] == 1  # resumed after epoch 1, from last.weights.h5
    warnings = caplog.text
    assert "backup/latest.weights.h5 is damaged" in warnings and "resuming from" in warnings
    checkpoints.verify(run / "backup" / "latest.weights.h5")  # rewritten whole after epoch 2

    flip_a_byte(run / "backup" / "latest.weights.h5")
    flip_a_byte(run / "checkpoints" / "last.weights.h5")
    with pytest.raises(checkpoints.DamagedCheckpointError, match=r"no intact checkpoint to resume from: delete .*backup"):
        training.train(tiny_config(epochs=3), [shard_dir], run, verbose=0, export=False)

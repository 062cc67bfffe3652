"""Weights files that are whole, checksummed, and never written onto a full disk.

Keras writes checkpoints in place. Killed or out of disk space mid-write, the file is torn (h5py
even crashed the process with a segmentation fault on a full disk), and HDF5 keeps no checksum
of the data, so a flipped byte in a weight was never noticed. Here every weights file is written
under a temporary name beside its target and renamed when whole, after a check that the disk
has room for it; its sha256 (and the epoch it holds) is recorded in `checksums.json` in the same
folder, and `verify` compares before a file is reused. A file written before checksums existed
has no record and is trusted as before.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import keras
import numpy as np

from dual_encoder import files
from dual_encoder.errors import DualEncoderError

CHECKSUMS = "checksums.json"
MARGIN_BYTES = 1 << 20  # HDF5 bookkeeping on top of the raw weights
WEIGHTS_SUFFIX = ".weights.h5"  # Keras requires it of every weights file name


class _FileProblem(DualEncoderError, OSError):
    """An OSError with an errno whose str() is the message alone (the CLIs print it as one line)."""

    CODE = errno.EIO

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(code or self.CODE, message)

    def __str__(self):
        return self.strerror


class DiskFullError(_FileProblem):
    """Not enough free space to write a checkpoint; the last complete one is kept."""

    CODE = errno.ENOSPC


class CheckpointWriteError(_FileProblem):
    """A checkpoint could not be written for another reason than space (named in the message)."""


class DamagedCheckpointError(_FileProblem):
    """A weights file does not match the checksum recorded when it was written, or cannot be read."""


def weights_bytes(model: keras.Model) -> int:
    """Bytes of every variable a weights file holds (model and optimizer)."""
    variables = list(model.weights) + list(getattr(model.optimizer, "variables", []) or [])
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """Raises DiskFullError unless `folder`'s file system has `needed` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(f"not enough free space in {folder} to write {what} (about {needed / 2**20:.1f} "
                            f"MiB needed, {free / 2**20:.1f} MiB free): free some space and rerun the same command")


def _records(folder: Path) -> dict:
    try:
        return json.loads((folder / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return {}


def _matching_record(path: Path) -> Optional[dict]:
    """The record (sha256, epoch) of the file `path` holds now: the latest, or the one before it
    when a writer was killed between recording a new file and renaming it into place. None when
    nothing is recorded; {} when the file matches neither (damaged)."""
    entry = _records(path.parent).get(path.name)
    if not entry:
        return None
    digest = files.file_sha256(path)
    return next((r for r in (entry, entry.get("previous") or {}) if r.get("sha256") == digest), {})


def recorded_epoch(path: Path) -> Optional[int]:
    """The epoch count `path` was saved after, as recorded with its checksum (None if unknown)."""
    return (_matching_record(path) or {}).get("epoch") if path.exists() else None


def save_weights(model: keras.Model, path, epoch: Optional[int] = None) -> None:
    """`model.save_weights(path)`, whole or not at all, with its checksum (and epoch) recorded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    require_free_space(path.parent, weights_bytes(model) + MARGIN_BYTES, path.name)
    tmp = Path(files.temporary_name(path, suffix=WEIGHTS_SUFFIX))
    try:
        model.save_weights(str(tmp))
        # Recorded before the rename, keeping the previous record: killed in between, the old file
        # still matches a record (and its epoch), so nothing whole is ever reported as damaged.
        records = _records(path.parent)
        previous = _matching_record(path) if path.exists() else None
        records[path.name] = {"sha256": files.file_sha256(tmp), "epoch": epoch, "previous": previous or None}
        files.write_json(path.parent / CHECKSUMS, records)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        problem = DiskFullError if error.errno == errno.ENOSPC else CheckpointWriteError
        raise problem(f"could not write {path} ({error.strerror or error}); the previous file is kept: fix that and "
                      "rerun the same command to resume", error.errno) from None


def verify(path) -> None:
    """Raises DamagedCheckpointError if `path` differs from the checksum recorded when it was written."""
    if _matching_record(Path(path)) == {}:
        raise DamagedCheckpointError(f"{path} is damaged: its sha256 differs from the one recorded when it was written")


def load_weights(model: keras.Model, path) -> None:
    """`model.load_weights(path)` after `verify`; an unreadable file is a DamagedCheckpointError naming it."""
    verify(path)
    try:
        model.load_weights(str(path))
    except (OSError, ValueError) as error:
        raise DamagedCheckpointError(f"{path} cannot be read ({str(error).splitlines()[0][:200]})") from None


def finite_loss(logs) -> bool:
    """False after a NaN or infinite loss: such weights are never saved over good ones."""
    loss = (logs or {}).get("loss")
    return loss is None or np.isfinite(float(loss))


class WeightsCheckpoint(keras.callbacks.Callback):
    """ModelCheckpoint(save_weights_only=True), written with `save_weights`: every epoch, or with
    `monitor` only when it improves on `best` (lower is better; `best` survives a resume through
    CallbackStateBackup)."""

    def __init__(self, path, monitor: Optional[str] = None):
        super().__init__()
        self.path, self.monitor, self.best = Path(path), monitor, float("inf")
        self.epochs_done = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_done = epoch + 1
        if not finite_loss(logs):
            return
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or not float(value) < self.best:
                return
            self.best = float(value)
        save_weights(self.model, self.path, epoch=epoch + 1)

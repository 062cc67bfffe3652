"""Keras callbacks of a run: the non-finite-loss guard, epoch timing, checkpoints, and the resume
backup (weights, epoch, and the early-stopping / learning-rate / best-checkpoint counters).

The backup does what keras.callbacks.BackupAndRestore does, in the same files (so older run
folders resume), but through `checkpoints.save_weights`: whole files only, checksummed, never
written onto a full disk. `restore_backup` verifies it before a resume and falls back to
`checkpoints/last.weights.h5` when the backup is damaged.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import keras

from dual_encoder import files
from dual_encoder.config import RunConfig
from dual_encoder.training.checkpoints import (
    DamagedCheckpointError,
    WeightsCheckpoint,
    finite_loss,
    load_weights,
    recorded_epoch,
    save_weights,
)

logger = logging.getLogger(__name__)


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops at the first non-finite loss and remembers where, so `train()` can say so."""

    def __init__(self):
        super().__init__()
        self.where = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = (self._epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True


class CallbackStateBackup(keras.callbacks.Callback):
    """Keeps the counters of EarlyStopping, ReduceLROnPlateau and best-only ModelCheckpoint across
    a resume: BackupAndRestore brings back weights, optimizer and epoch but not these, so a resumed
    run would wait its full patience again and overwrite the best checkpoint with a worse one.
    Written after every epoch; restored when training begins (list it after those callbacks)."""

    FIELDS = {keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch"),
              keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
              keras.callbacks.ModelCheckpoint: ("best",), WeightsCheckpoint: ("best",)}

    def __init__(self, path: Path, callbacks):
        super().__init__()
        self.path = Path(path)
        self.tracked = [(c, fields) for c in callbacks for kind, fields in self.FIELDS.items() if isinstance(c, kind)]

    def _state(self) -> list:
        return [{f: _json_number(getattr(c, f, None)) for f in fields} for c, fields in self.tracked]

    def on_train_begin(self, logs=None):
        if not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError) as error:
            logger.warning("%s is unreadable (%s); the early-stopping and learning-rate counters start afresh", self.path,
                           error)
            return
        if not isinstance(saved, list) or len(saved) != len(self.tracked):
            logger.warning("%s does not match this run's callbacks; their counters start afresh", self.path)
            return
        for (callback, fields), values in zip(self.tracked, saved):
            for field in fields:
                if values.get(field) is not None:
                    setattr(callback, field, values[field])

    def on_epoch_end(self, epoch, logs=None):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(self.path, self._state(), indent=None)


def _json_number(value):
    """Python floats/ints for JSON (numpy scalars and infinities included)."""
    if value is None:
        return None
    value = float(value)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


BACKUP_WEIGHTS = ("backup", "latest.weights.h5")  # BackupAndRestore's file names, so older run folders resume
BACKUP_METADATA = ("backup", "training_metadata.json")
LAST_WEIGHTS = ("checkpoints", "last.weights.h5")
BEST_WEIGHTS = ("checkpoints", "best.weights.h5")


class ResumeBackup(keras.callbacks.Callback):
    """After every epoch: the weights (optimizer included) and the epoch count, for `restore_backup`."""

    def __init__(self, output_dir: Path):
        super().__init__()
        self.weights, self.metadata = output_dir.joinpath(*BACKUP_WEIGHTS), output_dir.joinpath(*BACKUP_METADATA)

    def on_epoch_end(self, epoch, logs=None):
        if not finite_loss(logs):  # the NaN guard stops the run: the backup keeps the last good epoch
            return
        save_weights(self.model, self.weights, epoch=epoch + 1)
        files.write_json(self.metadata, {"epoch": epoch + 1, "batch": 0}, indent=None)


def _backup_epoch(output_dir: Path) -> int:
    epoch = recorded_epoch(output_dir.joinpath(*BACKUP_WEIGHTS))
    if epoch is None:  # written by keras.callbacks.BackupAndRestore
        try:
            epoch = json.loads(output_dir.joinpath(*BACKUP_METADATA).read_text())["epoch"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DamagedCheckpointError(f"{output_dir.joinpath(*BACKUP_METADATA)} is unreadable: the epoch to resume "
                                         "from is unknown") from None
    return int(epoch)


def restore_backup(model: keras.Model, output_dir: Path) -> int:
    """Loads the resume backup of `output_dir` into `model` (optimizer built first) and returns the
    number of epochs it holds (0 without a backup). A damaged backup falls back to
    checkpoints/last.weights.h5 where that is intact; otherwise the error says what to delete."""
    backup = output_dir.joinpath(*BACKUP_WEIGHTS)
    if not backup.exists():
        return 0
    if recorded_epoch(backup) is None and not output_dir.joinpath(*BACKUP_METADATA).exists():
        logger.warning("%s has no record of its epoch (a run killed while saving its first epoch): training starts "
                       "again from epoch 1", backup)
        return 0
    model.build_optimizer()
    try:
        epoch = _backup_epoch(output_dir)
        load_weights(model, backup)
        return epoch
    except DamagedCheckpointError as damaged:
        last = output_dir.joinpath(*LAST_WEIGHTS)
        epoch = recorded_epoch(last) if last.exists() else None
        if epoch is not None:
            try:
                load_weights(model, last)
                logger.warning("%s; resuming from %s (after epoch %d) instead", damaged, last, epoch)
                return epoch
            except DamagedCheckpointError as also:
                damaged = DamagedCheckpointError(f"{damaged}; {also}")
        raise DamagedCheckpointError(f"{damaged}, and no intact checkpoint to resume from: delete {backup.parent} to "
                                     "train this run again from its first epoch, or pass another --output-dir") from None


def make_callbacks(config: RunConfig, output_dir: Path, has_validation: bool):
    monitor = "val_loss" if has_validation else "loss"
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    guard = NonFiniteLossGuard()
    callbacks = [
        guard,
        ResumeBackup(output_dir),
        WeightsCheckpoint(output_dir.joinpath(*BEST_WEIGHTS), monitor=monitor),
        WeightsCheckpoint(output_dir.joinpath(*LAST_WEIGHTS)),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.train.early_stopping_patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(str(output_dir / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(output_dir / "tensorboard")),
    ]
    if config.finetune.lr_schedule == "constant":  # a schedule sets the learning rate itself
        callbacks.insert(5, keras.callbacks.ReduceLROnPlateau(monitor=monitor, patience=config.train.reduce_lr_patience,
                                                              factor=config.train.reduce_lr_factor))
    callbacks.append(CallbackStateBackup(output_dir / "backup" / "callback_state.json", callbacks))
    return callbacks, guard


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

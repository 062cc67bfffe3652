"""Keras callbacks of a run: the non-finite-loss guard, epoch timing, and resume state that
BackupAndRestore leaves out (early-stopping, learning-rate and best-checkpoint counters).
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
              keras.callbacks.ModelCheckpoint: ("best",)}

    def __init__(self, path: Path, callbacks):
        super().__init__()
        self.path = Path(path)
        self.tracked = [(c, fields) for c in callbacks for kind, fields in self.FIELDS.items() if isinstance(c, kind)]

    def _state(self) -> list:
        return [{f: _json_number(getattr(c, f, None)) for f in fields} for c, fields in self.tracked]

    def on_train_begin(self, logs=None):
        if not self.path.exists():
            return
        saved = json.loads(self.path.read_text())
        if len(saved) != len(self.tracked):
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


def make_callbacks(config: RunConfig, output_dir: Path, has_validation: bool):
    monitor = "val_loss" if has_validation else "loss"
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    guard = NonFiniteLossGuard()
    callbacks = [
        guard,
        keras.callbacks.BackupAndRestore(str(output_dir / "backup"), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(output_dir / "checkpoints" / "best.weights.h5"), monitor=monitor,
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.ModelCheckpoint(str(output_dir / "checkpoints" / "last.weights.h5"), save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.train.early_stopping_patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, patience=config.train.reduce_lr_patience,
                                          factor=config.train.reduce_lr_factor),
        keras.callbacks.CSVLogger(str(output_dir / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(output_dir / "tensorboard")),
    ]
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

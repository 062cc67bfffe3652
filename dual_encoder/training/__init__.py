"""Training: `train()` and what it is made of, one module per job.

`trainer` (towers + model under a strategy, resume, results), `callbacks`, `distribution`
(tf.distribute), `run_folder` (what a run folder records), `optimizer` (AdamW, decay by role)
and `feature_cache` (frozen-tower features computed once). The names below are the stage's
public API; `train` is what `train.py` and notebooks call.
"""

from dual_encoder.training.callbacks import CallbackStateBackup, EpochTimer, NonFiniteLossGuard
from dual_encoder.training.distribution import make_strategy
from dual_encoder.training.optimizer import decays, make_optimizer
from dual_encoder.training.run_folder import read_log
from dual_encoder.training.trainer import TrainingDiverged, build_model, build_towers, choose_sequence_length, train

__all__ = ["CallbackStateBackup", "EpochTimer", "NonFiniteLossGuard", "TrainingDiverged", "build_model", "build_towers",
           "choose_sequence_length", "decays", "make_optimizer", "make_strategy", "read_log", "train"]

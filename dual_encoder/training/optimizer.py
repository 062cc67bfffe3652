"""AdamW with weight decay chosen by role, as open_clip chooses it.
"""

from __future__ import annotations

import keras

from dual_encoder.config import RunConfig


def decays(variable) -> bool:
    """Weight decay by role, as open_clip chooses it: kernels, embedding tables and other matrices
    decay; everything with fewer than 2 dimensions never does (biases, norm gains and shifts, the
    class-prior gate, the temperature and SigLIP's bias), whatever the layers are named."""
    return len(variable.shape) >= 2


def make_optimizer(config: RunConfig, model: keras.Model) -> keras.optimizers.Optimizer:
    """AdamW for `model`'s trainable variables, decaying only those `decays` picks."""
    optimizer = keras.optimizers.AdamW(learning_rate=config.train.learning_rate, weight_decay=config.train.weight_decay)
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if not decays(v)])
    return optimizer

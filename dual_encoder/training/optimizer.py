"""AdamW with weight decay chosen by role, as open_clip chooses it, and its learning-rate schedule.
"""

from __future__ import annotations

from typing import Optional

import keras

from dual_encoder.config import RunConfig


def decays(variable) -> bool:
    """Weight decay by role, as open_clip chooses it: kernels, embedding tables and other matrices
    decay; everything with fewer than 2 dimensions never does (biases, norm gains and shifts, the
    class-prior gate, the temperature and SigLIP's bias), whatever the layers are named."""
    return len(variable.shape) >= 2


def learning_rate(config: RunConfig, steps_per_epoch: Optional[int] = None):
    """The learning rate, or with `--lr-schedule cosine` its schedule: a linear warmup from 0 over
    `--warmup-fraction` of all steps, then cosine decay to 0 at the last step (`steps_per_epoch`
    x epochs; the pairs of an epoch are counted from the data, so the end is approximate)."""
    peak = config.train.learning_rate
    if config.finetune.lr_schedule == "constant":
        return peak
    total = max(1, int(steps_per_epoch or 1) * config.train.epochs)
    warmup = int(round(config.finetune.warmup_fraction * total))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak, decay_steps=max(1, total - warmup), alpha=0.0,
        warmup_target=peak if warmup else None, warmup_steps=warmup)


def make_optimizer(config: RunConfig, model: keras.Model, steps_per_epoch: Optional[int] = None) -> keras.optimizers.Optimizer:
    """AdamW for `model`'s trainable variables, decaying only those `decays` picks."""
    # Fine-tuning a CLIP / SigLIP (--init) uses CLIP's own Adam settings (beta_2 0.98, epsilon 1e-6,
    # as open_clip for ViTs): the larger epsilon damps the steps of weights whose true gradient is
    # 0 and whose computed one is rounding noise (attention key biases), which Adam would otherwise
    # blow up to full learning-rate steps of random sign.
    recipe = {"beta_2": 0.98, "epsilon": 1e-6} if config.finetune.init else {}
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate(config, steps_per_epoch),
                                       weight_decay=config.train.weight_decay, **recipe)
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if not decays(v)])
    return optimizer

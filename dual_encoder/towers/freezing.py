"""Locking towers: frozen, fine-tuned whole, or only their last N weighted layers (or transformer blocks).
"""

from __future__ import annotations

from typing import Optional

import keras

from dual_encoder import _compat
from dual_encoder.errors import InvalidArgumentError


def _leaf_layers(model: keras.Model):
    """Layers owning weights, in graph order, looking inside nested models (backbones)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        elif layer.weights:
            yield layer


def freeze(model: keras.Model, trainable: bool, last_n_layers: Optional[int] = None, blocks: Optional[list] = None) -> None:
    """Freezes a tower, or fine-tunes all of it, or only its last N weighted layers.

    With `last_n_layers`, BatchNormalization layers stay frozen (inference statistics): small
    contrastive batches would wreck the pretrained statistics. With `blocks` (a transformer
    tower's blocks in order, as towers/clip.py records them) N counts blocks, as open_clip's
    and LiT's locking does: the last N blocks train, with every weighted layer after them (the
    final norm, an attention-pooling head); the embeddings and earlier blocks stay frozen.
    Call `compile()` again afterwards.
    """
    if last_n_layers is not None and last_n_layers < 0:
        raise InvalidArgumentError(f"last_n_layers must be >= 0, got {last_n_layers}")
    _compat.set_trainable(model, bool(trainable))
    if not trainable or last_n_layers is None:
        return
    layers = list(_leaf_layers(model))
    if blocks:
        unfrozen = _from_block(layers, blocks, last_n_layers)
    else:
        candidates = [layer for layer in layers if not isinstance(layer, keras.layers.BatchNormalization)]
        unfrozen = {id(layer) for layer in candidates[len(candidates) - last_n_layers:]} if last_n_layers else set()
    for layer in layers:
        _compat.set_trainable(layer, id(layer) in unfrozen)


def _from_block(layers: list, blocks: list, count: int) -> set:
    """ids of the weighted layers from the first of the last `count` blocks onwards (none for 0)."""
    if not count:
        return set()
    first = blocks[max(0, len(blocks) - count)]
    start = next(i for i, layer in enumerate(layers) if layer is first)
    return {id(layer) for layer in layers[start:]}

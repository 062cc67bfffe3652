"""The Keras layers every tower is made of: pixel normalisation, token pooling, the text preprocessor.

They live inside the saved models (model.keras, SavedModel), so each is registered for
serialisation and rebuilds from its config alone.
"""

from __future__ import annotations

import base64

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from dual_encoder import _compat
from dual_encoder.errors import InvalidArgumentError

_SERIALIZABLE = "dual_encoder"
DEFAULT_SEQUENCE_LENGTH = 64  # captions are short; preset defaults of 256-512 cost 5-20x
POOLING_MODES = ("cls", "mean", "max", "last")


# --- layers ------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_SERIALIZABLE)
class PixelNormalization(keras.layers.Layer):
    """The tower's own pixel normalisation, inside the model so raw 0..255 pixels go in."""

    def __init__(self, scale=(1.0, 1.0, 1.0), offset=(0.0, 0.0, 0.0), channel_order="rgb", **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset, self.channel_order = list(scale), list(offset), channel_order

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        if self.channel_order == "bgr":
            images = keras.ops.flip(images, axis=-1)
        scale, offset = (keras.ops.convert_to_tensor(v, self.compute_dtype) for v in (self.scale, self.offset))
        return images * scale + offset

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset, "channel_order": self.channel_order}


@keras.saving.register_keras_serializable(package=_SERIALIZABLE)
class TokenPooling(keras.layers.Layer):
    """[B, T, D] (+ padding mask) -> [B, D]: the CLS token, masked mean/max, or last real token."""

    def __init__(self, mode="cls", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise InvalidArgumentError(f"unknown pooling {mode!r}; choose one of {POOLING_MODES}")
        self.mode = mode

    def call(self, sequence, padding_mask=None):
        ops = keras.ops
        if self.mode == "cls":
            return sequence[:, 0, :]
        if padding_mask is None:
            padding_mask = ops.ones(ops.shape(sequence)[:2], "int32")
        mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence.dtype)
        if self.mode == "mean":
            return ops.sum(sequence * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1e-9)
        if self.mode == "max":
            return ops.max(ops.where(mask > 0, sequence, ops.full_like(sequence, -np.inf)), axis=1)
        last = ops.maximum(ops.sum(ops.cast(padding_mask, "int32"), axis=1) - 1, 0)  # right padding
        return ops.take_along_axis(sequence, last[:, None, None], axis=1)[:, 0, :]

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package=_SERIALIZABLE)
class TextPreprocessor(_compat.PreprocessingLayer):
    """Strings -> int32 `token_ids`, `padding_mask` (+ `segment_ids`) padded to `sequence_length`.

    Always runs the TF (tensorflow-text) path of the keras-hub tokenizer and packer, also eagerly,
    so tokens are identical in tf.data, tf.distribute and SavedModel graphs. `get_config` holds
    the vocabulary (and BPE merges, or a SentencePiece model), so the layer rebuilds from its
    config alone.

    `add_start` / `add_end`: the start and end tokens (SigLIP has no start token). `normalize`:
    what a CLIP / SigLIP preprocessor does to the text first, so captions tokenize as the
    checkpoint saw them: `lowercase` (CLIP) or `siglip` (lower case, punctuation removed,
    whitespace collapsed).
    """

    NORMALIZE = (None, "lowercase", "siglip")
    _SIGLIP_PUNCTUATION = r"!|\"|#|\$|%|&|\\|'|\(|\)|\*|\+|,|-|\.|/|:|;|<|=|>|\?|@|\[|\\|\]|\^|_|`|{|\||}|~"

    def __init__(self, tokenizer, sequence_length=DEFAULT_SEQUENCE_LENGTH, segment_ids=True, add_start=True, add_end=True,
                 normalize=None, **kwargs):
        super().__init__(**kwargs)
        if normalize not in self.NORMALIZE:
            raise InvalidArgumentError(f"unknown text normalisation {normalize!r}; choose one of {self.NORMALIZE}")
        # TF path only (keras-hub otherwise tokenizes eagerly in Python); passed at construction
        # too, as BPE tokenizers would otherwise also build a Python (`tokenizers`) copy.
        if isinstance(tokenizer, dict):
            tokenizer = keras.saving.deserialize_keras_object(_compat.tf_only_config(_with_proto(tokenizer)))
        _compat.force_tf_workflow(tokenizer)
        self.tokenizer, self.sequence_length, self.segment_ids = tokenizer, int(sequence_length), segment_ids
        self.add_start, self.add_end, self.normalize = bool(add_start), bool(add_end), normalize
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=self.sequence_length, start_value=getattr(tokenizer, "start_token_id", None) if add_start else None,
            end_value=tokenizer.end_token_id if add_end else None, pad_value=tokenizer.pad_token_id, return_padding_mask=True,
            **_compat.TF_ONLY)

    def _normalized(self, texts):
        if self.normalize is None:
            return texts
        texts = tf.strings.lower(texts)
        if self.normalize == "siglip":  # as keras-hub's SigLIPPreprocessor.canonicalize_inputs
            texts = tf.strings.regex_replace(texts, self._SIGLIP_PUNCTUATION, "")
            texts = tf.strings.strip(tf.strings.regex_replace(texts, r"\s+", " "))
        return texts

    @_compat.preprocessing_function
    def call(self, texts):
        token_ids, padding_mask = self.packer(self.tokenizer(self._normalized(texts)))
        tokens = {"token_ids": tf.cast(token_ids, tf.int32), "padding_mask": tf.cast(padding_mask, tf.int32)}
        if self.segment_ids:
            tokens["segment_ids"] = tf.zeros_like(tokens["token_ids"])
        return tokens

    def get_config(self):
        tokenizer = keras.saving.serialize_keras_object(self.tokenizer)
        tokenizer["config"].update({key: getattr(self.tokenizer, key) for key in ("vocabulary", "merges")
                                    if getattr(self.tokenizer, key, None) is not None})
        if isinstance(getattr(self.tokenizer, "proto", None), bytes):  # SentencePiece keeps its model in an asset file
            tokenizer["config"][_PROTO_KEY] = base64.b64encode(self.tokenizer.proto).decode("ascii")
        options = {"add_start": self.add_start, "add_end": self.add_end, "normalize": self.normalize}
        defaults = {"add_start": True, "add_end": True, "normalize": None}
        return {**super().get_config(), "tokenizer": tokenizer, "sequence_length": self.sequence_length,
                "segment_ids": self.segment_ids, **{k: v for k, v in options.items() if v != defaults[k]}}


_PROTO_KEY = "proto_base64"


def _with_proto(serialized: dict) -> dict:
    """A serialized tokenizer with its SentencePiece model (stored base64 in our config) put back as bytes."""
    config = dict(serialized["config"])
    if _PROTO_KEY in config:
        config["proto"] = base64.b64decode(config.pop(_PROTO_KEY))
    return {**serialized, "config": config}

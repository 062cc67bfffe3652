"""Text towers by name: keras-hub presets, local keras-hub or Hugging Face folders, tiny.

Each tower comes with a preprocessor of TF ops (tensorflow-text) that runs in tf.data, under
tf.distribute and inside a SavedModel, and pools the way its checkpoint was trained to.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Optional

import keras
import keras_hub
import tensorflow as tf

from dual_encoder import _compat
from dual_encoder.errors import InvalidArgumentError
from dual_encoder.towers.layers import DEFAULT_SEQUENCE_LENGTH, TextPreprocessor, TokenPooling
from dual_encoder.towers.loading import downloading, is_hub, is_local, portable, preset_id, read_json, unknown_tower

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class TinyTextConfig:
    """A 2-layer BERT over a vocabulary built from the training captions."""

    num_layers: int = 2
    num_heads: int = 2
    hidden_dim: int = 64
    intermediate_dim: int = 128
    pooling: str = "mean"  # a bag-of-words signal from step one: a random tower learns faster than from [CLS]
TINY_TEXT = TinyTextConfig()
TEXT_TOWERS = ("tiny", "bert_tiny_en_uncased", "bert_small_en_uncased", "bert_medium_en_uncased",
               "bert_base_en_uncased", "bert_large_en_uncased", "gpt2_base_en")
# Hugging Face `hidden_act` values that keras-hub's BERT (tanh-approximate GELU) does not match.
_HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}


@dataclasses.dataclass
class TextTower:
    name: str
    preprocessor: keras.layers.Layer  # tf.string [B] -> dict of int32 [B, sequence_length]
    model: keras.Model  # that dict -> [B, feature_dim]
    sequence_length: int
    feature_dim: int
    spec: dict
    # Transformer blocks in order, where `--trainable-layers N` counts blocks instead of weighted layers
    # (the towers of a CLIP / SigLIP preset, towers/clip.py).
    blocks: Optional[list] = None
    # The weights the checkpoint puts after this tower (towers/clip.py `Head`), for the head to start from.
    projection: Optional[object] = None


# --- text towers -------------------------------------------------------------------------


def build_vocabulary(captions, size: int = 2000) -> list[str]:
    """A WordPiece vocabulary (lower-cased, accents stripped) from captions, for the tiny tower."""
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(list(captions)).batch(1000), size, lowercase=True,
        strip_accents=True, reserved_tokens=list(SPECIAL_TOKENS))


@dataclasses.dataclass
class _TextBackbone:
    """What each text source hands to `build_text_tower`."""

    model: keras.Model
    tokenizer: keras.layers.Layer
    pooling: str = "cls"
    weights: Optional[dict] = None  # JSON-able identity; None = random init
    activation: Optional[str] = None  # set where we replaced keras-hub's default


def _tiny_text(vocabulary, sequence_length: int) -> _TextBackbone:
    if not vocabulary:
        raise InvalidArgumentError("the tiny text tower needs vocabulary=build_vocabulary(captions)")
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=list(vocabulary), lowercase=True, strip_accents=True,
                                                   **_compat.TF_ONLY)
    architecture = dataclasses.asdict(TINY_TEXT)
    pooling = architecture.pop("pooling")
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), max_sequence_length=sequence_length,
                                             **architecture)
    return _TextBackbone(backbone, tokenizer, pooling)


def _tokenizer_options(name: str, hf_config: Optional[dict]) -> dict:
    """Match a Hugging Face BERT tokenizer: keras-hub reads `do_lower_case` but not accents,
    which HF strips whenever it lower-cases unless `strip_accents` says otherwise."""
    options = dict(_compat.TF_ONLY)
    tokenizer_config = read_json(name, "tokenizer_config.json") if hf_config else None
    if tokenizer_config and "Bert" in tokenizer_config.get("tokenizer_class", "BertTokenizer"):
        strip = tokenizer_config.get("strip_accents")
        options["strip_accents"] = bool(tokenizer_config.get("do_lower_case", False) if strip is None else strip)
    return options


def _text_pooling(name: str, backbone) -> str:
    """sentence-transformers folders say how they pool; decoders pool their last real token
    (a backbone with a CausalLM task); encoders their [CLS] token."""
    pooling_config = read_json(name, "1_Pooling/config.json") if is_local(name) else None
    if pooling_config:
        modes = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}
        return next((mode for mode, key in modes.items() if pooling_config.get(key)), "mean")
    causal = [keras_hub.models.CausalLM]
    while causal:
        task = causal.pop()
        if getattr(task, "backbone_cls", None) is type(backbone):
            return "last"
        causal.extend(task.__subclasses__())
    return "cls"


def _hub_text(name: str, pretrained: bool) -> _TextBackbone:
    """A keras-hub text backbone + tokenizer from a preset name, handle or local folder."""
    hf_config = read_json(name, "config.json") if is_local(name) else None
    hf_config = hf_config if hf_config and "model_type" in hf_config else None
    with downloading(name, f"keras-hub preset of text tower {name!r}",
                      "a local preset directory as --text-encoder (a keras-hub preset or a Hugging Face / "
                      "sentence-transformers BERT folder, e.g. ../shared/weights/all-minilm-l6-v2), or 'tiny' "
                      "with a vocabulary built from the captions; --no-pretrained does not help for a preset name, "
                      "whose config and vocabulary must be downloaded too."):
        backbone = keras_hub.models.Backbone.from_preset(name, load_weights=pretrained)
        if not isinstance(backbone.input, dict) or not {"token_ids", "padding_mask"} <= set(backbone.input):
            raise InvalidArgumentError(f"{name!r} holds a {type(backbone).__name__}, not a text backbone")
        tokenizer = keras_hub.models.Tokenizer.from_preset(name, **_tokenizer_options(name, hf_config))
    activation = _HF_ACTIVATIONS.get((hf_config or {}).get("hidden_act"))
    if activation and isinstance(backbone, keras_hub.models.BertBackbone):
        # keras-hub's BERT hard-codes the tanh GELU; checkpoints trained with the exact (erf) GELU
        # drift by ~2e-4 with it. Each TransformerEncoder's config records the swap.
        for layer in backbone.transformer_layers:
            _compat.set_feedforward_activation(layer, keras.activations.get(activation))
    return _TextBackbone(backbone, tokenizer, _text_pooling(name, backbone), preset_id(name) if pretrained else None,
                         activation)


def lower_layer_outputs(backbone, layers: int, name: str) -> list:
    """The token sequences that the `layers` transformer blocks below the top put out, lowest first."""
    blocks = list(getattr(backbone, "transformer_layers", None) or [])
    if len(blocks) - 1 < layers:
        raise InvalidArgumentError(f"--text-feature-layers {layers}: text tower {name!r} has {max(len(blocks) - 1, 0)} "
                                   "transformer blocks below its top; pass at most that many, or 0")
    return [block.output for block in blocks[len(blocks) - 1 - layers:-1]]


def build_text_tower(name: str = "bert_base_en_uncased", pretrained: bool = True,
                     sequence_length: Optional[int] = None, vocabulary: Optional[list[str]] = None,
                     feature_layers: int = 0) -> TextTower:
    """Text tower by name: `tiny` (needs `vocabulary`), a keras-hub preset, or a local folder.

    `pretrained=False` keeps the architecture and tokenizer but initialises weights randomly.
    `feature_layers` N > 0 appends to the pooled top features the same pooling of the N blocks
    below the top: a sentence model's top layer is tuned for sentence similarity, the layers
    under it still hold the word-level detail (colours, counts) that tells two photos apart.
    """
    sequence_length = int(sequence_length or DEFAULT_SEQUENCE_LENGTH)
    if name.lower() == "tiny":
        built = _tiny_text(vocabulary, sequence_length)
    elif vocabulary is not None:
        raise InvalidArgumentError(f"vocabulary= is for the tiny text tower; {name!r} brings its own")
    elif is_hub(name, keras_hub.models.TextClassifier, keras_hub.models.CausalLM):
        built = _hub_text(name, pretrained)
    else:
        raise unknown_tower("text", name, TEXT_TOWERS)
    max_length = getattr(built.model, "max_sequence_length", None)
    if max_length and sequence_length > max_length:
        raise InvalidArgumentError(f"sequence_length={sequence_length} exceeds {name!r}'s maximum of {max_length}")
    inputs, outputs = built.model.input, built.model.output
    # The backbone's own graph up to the token sequence (BERT's unused NSP pooler left out).
    outputs = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    pooled = TokenPooling(built.pooling, name="token_pool")(outputs, inputs["padding_mask"])
    if feature_layers:
        lower = lower_layer_outputs(built.model, feature_layers, name)
        pooled = keras.layers.Concatenate(name="layer_features")(
            [pooled, *(TokenPooling(built.pooling, name=f"token_pool_{i}")(sequence, inputs["padding_mask"])
                       for i, sequence in enumerate(lower, 1))])
    model = keras.Model(inputs, pooled, name=f"text_tower_{Path(name).name}")
    preprocessor = TextPreprocessor(built.tokenizer, sequence_length, segment_ids="segment_ids" in inputs,
                                    name="text_preprocessor")
    vocab, tokenizer = [str(token) for token in built.tokenizer.get_vocabulary()], built.tokenizer
    feature_dim = int(model.output.shape[-1])
    spec = {"kind": "text", "name": name, "weights": built.weights, "sequence_length": sequence_length,
            "pooling": built.pooling, "activation": built.activation or "keras-hub default",
            "tokenizer": {"class": type(tokenizer).__name__, "lowercase": getattr(tokenizer, "lowercase", None),
                          "strip_accents": getattr(tokenizer, "strip_accents", None), "vocabulary_size": len(vocab),
                          "vocabulary_sha256": hashlib.sha256("\n".join(vocab).encode()).hexdigest()},
            "feature_dim": feature_dim,
            "build": {"name": portable(name), "pretrained": pretrained, "sequence_length": sequence_length,
                      "vocabulary": list(vocabulary) if vocabulary is not None else None}}
    if feature_layers:  # only then, so the caches of towers without them keep their identity
        spec["feature_layers"] = spec["build"]["feature_layers"] = feature_layers
    return TextTower(name, preprocessor, model, sequence_length, feature_dim, spec)

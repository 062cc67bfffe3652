"""Image and text towers by name: keras.applications, keras-hub presets, local folders, tiny.

A tower turns raw inputs into pooled features and carries everything a caller needs to feed it:
the image size and resize mode its checkpoint expects, its own pixel normalisation (inside the
model, so raw 0..255 pixels go in), and for text a preprocessor of TF ops (tensorflow-text) that
runs in `tf.data`, under `tf.distribute` and inside a SavedModel. `spec` is a JSON-able identity
of weights + preprocessing, used as a feature-cache key and to rebuild the tower (`from_spec`).

Names accepted: those in `IMAGE_TOWERS` / `TEXT_TOWERS`, any keras-hub preset of a suitable
task (`keras_hub.models.ImageClassifier.presets`, `TextClassifier.presets`, `CausalLM.presets`),
a `kaggle://` or `hf://` handle, or a local preset directory (a keras-hub preset, or a Hugging
Face folder keras-hub converts, such as a sentence-transformers BERT).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import urllib.error
from pathlib import Path
from typing import Optional, Union

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from dual_encoder import _compat
from dual_encoder.errors import DualEncoderError, InvalidArgumentError, PathNotFoundError

_SERIALIZABLE = "dual_encoder"
DEFAULT_SEQUENCE_LENGTH = 64  # captions are short; preset defaults of 256-512 cost 5-20x
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
POOLING_MODES = ("cls", "mean", "max", "last")


class PretrainedWeightsUnavailable(DualEncoderError, RuntimeError):
    """Pretrained weights (or a preset's config) could not be downloaded, e.g. offline."""


# --- tables ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel `x[..., order] * scale + offset` on 0..255 RGB pixels."""

    scale: tuple = (1.0, 1.0, 1.0)
    offset: tuple = (0.0, 0.0, 0.0)
    channel_order: str = "rgb"

    @classmethod
    def of(cls, scale=None, offset=None, channel_order="rgb") -> "Normalization":
        """Broadcasts scalars to 3 channels; None means identity, as in keras-hub's converters."""
        scale, offset = (np.broadcast_to(default if v is None else v, (3,)) for v, default in ((scale, 1.0), (offset, 0.0)))
        return cls(tuple(map(float, scale)), tuple(map(float, offset)), channel_order)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"scale": list(self.scale), "offset": list(self.offset)}


_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])
_TF = Normalization.of(1 / 127.5, -1.0)  # keras.applications "tf" mode: [-1, 1]
_TORCH = Normalization.of(1 / (255 * _IMAGENET_STD), -_IMAGENET_MEAN / _IMAGENET_STD)
_CAFFE = Normalization.of(1.0, [-103.939, -116.779, -123.68], "bgr")  # BGR, mean-subtracted
_IN_MODEL = Normalization()  # the application normalises inside its own graph


@dataclasses.dataclass(frozen=True)
class _Application:
    """A keras.applications tower: constructor name, default size, preprocessing."""

    constructor: str
    image_size: int
    normalization: Normalization
    # keras' EfficientNet (v1) adds a per-channel rescale only when weights == "imagenet", so a
    # local copy of that file would otherwise be fed differently (keras issue tf#49930).
    imagenet_rescale: bool = False


_EFFICIENTNET_SIZES = (224, 240, 260, 300, 380, 456, 528, 600)
_EFFICIENTNETV2_SIZES = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "s": 384, "m": 480, "l": 480}
KERAS_APPLICATIONS = {
    "xception": _Application("Xception", 299, _TF),
    "inceptionv3": _Application("InceptionV3", 299, _TF),
    "resnet50": _Application("ResNet50", 224, _CAFFE),
    "resnet50v2": _Application("ResNet50V2", 224, _TF),
    "mobilenetv2": _Application("MobileNetV2", 224, _TF),
    "densenet121": _Application("DenseNet121", 224, _TORCH),
    **{f"efficientnetb{i}": _Application(f"EfficientNetB{i}", size, _IN_MODEL, imagenet_rescale=True)
       for i, size in enumerate(_EFFICIENTNET_SIZES)},
    **{f"efficientnetv2{v}": _Application(f"EfficientNetV2{v.upper()}", size, _IN_MODEL)
       for v, size in _EFFICIENTNETV2_SIZES.items()},
}


@dataclasses.dataclass(frozen=True)
class TinyImageConfig:
    """A few strided convs: fast on CPU at 64 px, for tests and the offline smoke run."""

    image_size: int = 64
    filters: tuple = (16, 32, 64)


@dataclasses.dataclass(frozen=True)
class TinyTextConfig:
    """A 2-layer BERT over a vocabulary built from the training captions."""

    num_layers: int = 2
    num_heads: int = 2
    hidden_dim: int = 64
    intermediate_dim: int = 128
    pooling: str = "mean"  # a bag-of-words signal from step one: a random tower learns faster than from [CLS]


TINY_IMAGE = TinyImageConfig()
TINY_TEXT = TinyTextConfig()
IMAGE_TOWERS = ("tiny", *KERAS_APPLICATIONS)
TEXT_TOWERS = ("tiny", "bert_tiny_en_uncased", "bert_small_en_uncased", "bert_medium_en_uncased",
               "bert_base_en_uncased", "bert_large_en_uncased", "gpt2_base_en")
# Hugging Face `hidden_act` values that keras-hub's BERT (tanh-approximate GELU) does not match.
_HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}


@dataclasses.dataclass
class ImageTower:
    name: str
    model: keras.Model  # float32 [B, H, W, 3] in 0..255 -> [B, feature_dim]
    image_size: tuple[int, int]
    resize: str  # "squash" or "crop"
    feature_dim: int
    spec: dict


@dataclasses.dataclass
class TextTower:
    name: str
    preprocessor: keras.layers.Layer  # tf.string [B] -> dict of int32 [B, sequence_length]
    model: keras.Model  # that dict -> [B, feature_dim]
    sequence_length: int
    feature_dim: int
    spec: dict


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
    the vocabulary (and BPE merges), so the layer rebuilds from its config alone.
    """

    def __init__(self, tokenizer, sequence_length=DEFAULT_SEQUENCE_LENGTH, segment_ids=True, **kwargs):
        super().__init__(**kwargs)
        # TF path only (keras-hub otherwise tokenizes eagerly in Python); passed at construction
        # too, as BPE tokenizers would otherwise also build a Python (`tokenizers`) copy.
        if isinstance(tokenizer, dict):
            tokenizer = keras.saving.deserialize_keras_object(_compat.tf_only_config(tokenizer))
        _compat.force_tf_workflow(tokenizer)
        self.tokenizer, self.sequence_length, self.segment_ids = tokenizer, int(sequence_length), segment_ids
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=self.sequence_length, start_value=tokenizer.start_token_id,
            end_value=tokenizer.end_token_id, pad_value=tokenizer.pad_token_id, return_padding_mask=True,
            **_compat.TF_ONLY)

    @_compat.preprocessing_function
    def call(self, texts):
        token_ids, padding_mask = self.packer(self.tokenizer(texts))
        tokens = {"token_ids": tf.cast(token_ids, tf.int32), "padding_mask": tf.cast(padding_mask, tf.int32)}
        if self.segment_ids:
            tokens["segment_ids"] = tf.zeros_like(tokens["token_ids"])
        return tokens

    def get_config(self):
        tokenizer = keras.saving.serialize_keras_object(self.tokenizer)
        tokenizer["config"].update({key: getattr(self.tokenizer, key) for key in ("vocabulary", "merges")
                                    if getattr(self.tokenizer, key, None) is not None})
        return {**super().get_config(), "tokenizer": tokenizer, "sequence_length": self.sequence_length,
                "segment_ids": self.segment_ids}


# --- shared helpers ----------------------------------------------------------------------


def _is_local(name: str) -> bool:
    return os.path.isdir(os.path.expanduser(name))


def _weights_file(weights) -> Optional[str]:
    """The local weights file `weights` names; None for None / "imagenet" (download)."""
    if weights is None or weights in ("imagenet", "preset"):
        return None
    path = os.path.expanduser(str(weights))
    if not os.path.isfile(path):
        raise PathNotFoundError(f"weights file {str(weights)!r} not found; pass 'imagenet', a local weights file "
                                "(.h5 / .weights.h5) or None")
    return path


def _is_download_failure(exc: BaseException) -> bool:
    """What an offline download raises: keras.utils.get_file wraps URLError in a bare
    `Exception("URL fetch failure ...")`; kagglehub raises requests' ConnectionError and
    huggingface_hub LocalEntryNotFoundError (both OSError)."""
    return isinstance(exc, (OSError, urllib.error.URLError)) or str(exc).startswith("URL fetch failure")


@contextlib.contextmanager
def _downloading(name: str, what: str, instead: str):
    """Turns a failed download into one PretrainedWeightsUnavailable saying what to pass instead
    (errors about a local folder are the user's to see as they are)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - keras raises a bare Exception for fetch failures
        if _is_local(name) or not _is_download_failure(exc):
            raise
        cause = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise PretrainedWeightsUnavailable(
            f"{what} could not be downloaded (no network here?): {cause}\nPass instead: {instead}") from None


def _fingerprint(path: Union[str, os.PathLike]) -> str:
    """sha256 over a file's or directory's contents: the spec changes when the weights do."""
    path = Path(path).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def _local_id(path: str) -> dict:
    return {"path": os.path.abspath(os.path.expanduser(path)), "sha256": _fingerprint(path)}


def _portable(name: Optional[str]) -> Optional[str]:
    """Local paths made absolute, so `from_spec` works from any working directory."""
    return os.path.abspath(os.path.expanduser(name)) if name and os.path.exists(os.path.expanduser(name)) else name


def _preset_id(name: str) -> dict:
    """A local preset by content; a named one by its versioned kaggle handle."""
    return _local_id(name) if _is_local(name) else {"preset": _compat.builtin_preset_handle(name)}


def _is_hub(name: str, *tasks) -> bool:
    """A local preset folder, a kaggle:// / hf:// handle, or a built-in preset of one of `tasks`."""
    return _is_local(name) or "://" in name or any(name in task.presets for task in tasks)


def _read_json(directory: str, name: str) -> Optional[dict]:
    path = Path(directory).expanduser() / name
    return json.loads(path.read_text()) if path.is_file() else None


def _unknown(kind: str, name: str, known) -> Exception:
    if os.sep in name or name.startswith((".", "~")):  # meant as a folder
        return PathNotFoundError(f"{kind} tower {name!r}: no such directory (a local tower is a keras-hub preset "
                                 f"folder{', or a Hugging Face / sentence-transformers BERT folder' if kind == 'text' else ''})")
    return InvalidArgumentError(
        f"unknown {kind} tower {name!r}: not one of {', '.join(known)}, not a keras-hub preset of that kind, "
        "not a kaggle:// or hf:// handle and not an existing preset directory")


def _leaf_layers(model: keras.Model):
    """Layers owning weights, in graph order, looking inside nested models (backbones)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        elif layer.weights:
            yield layer


def freeze(model: keras.Model, trainable: bool, last_n_layers: Optional[int] = None) -> None:
    """Freezes a tower, or fine-tunes all of it, or only its last N weighted layers.

    With `last_n_layers`, BatchNormalization layers stay frozen (inference statistics): small
    contrastive batches would wreck the pretrained statistics. Call `compile()` again afterwards.
    """
    if last_n_layers is not None and last_n_layers < 0:
        raise InvalidArgumentError(f"last_n_layers must be >= 0, got {last_n_layers}")
    _compat.set_trainable(model, bool(trainable))
    if not trainable or last_n_layers is None:
        return
    layers = list(_leaf_layers(model))
    candidates = [layer for layer in layers if not isinstance(layer, keras.layers.BatchNormalization)]
    unfrozen = {id(layer) for layer in candidates[len(candidates) - last_n_layers:]} if last_n_layers else set()
    for layer in layers:
        _compat.set_trainable(layer, id(layer) in unfrozen)


def from_spec(spec: dict) -> Union[ImageTower, TextTower]:
    """Rebuilds the tower a spec describes (its build arguments are in `spec["build"]`)."""
    build = build_image_tower if spec["kind"] == "image" else build_text_tower
    return build(**spec["build"])


# --- image towers ------------------------------------------------------------------------


@dataclasses.dataclass
class _ImageBackbone:
    """What each image source hands to `build_image_tower`."""

    model: keras.Model
    image_size: tuple
    normalization: Normalization
    weights: Optional[dict]  # JSON-able identity; None = random init
    pooling: Optional[str] = None  # None: the backbone pools itself
    resize: str = "crop"
    interpolation: str = "bilinear"


def _tiny_image(image_size, weights_file) -> _ImageBackbone:
    size = (image_size or TINY_IMAGE.image_size,) * 2
    inputs = x = keras.Input((*size, 3))
    for filters in TINY_IMAGE.filters:
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    backbone = keras.Model(inputs, x, name="tiny_convnet")
    if weights_file:
        backbone.load_weights(weights_file)
    return _ImageBackbone(backbone, size, Normalization.of(1 / 255), weights_file and _local_id(weights_file), "avg")


def _application(name: str, weights, weights_file, image_size) -> _ImageBackbone:
    """A keras.applications backbone (global-average pooled) and the normalisation before it."""
    app = KERAS_APPLICATIONS[name]
    size = (image_size or app.image_size,) * 2
    with _downloading(name, f"ImageNet weights of image tower {name!r}",
                      f"--image-weights /path/to/{name}_notop.h5 (a local copy of the keras.applications no-top "
                      "weights file, .h5 or .weights.h5; in Python weights='/path/...'), a local keras-hub preset "
                      "directory as --image-encoder (e.g. ../shared/weights/efficientnet_lite0_keras), or "
                      "--no-pretrained (weights=None) for random initialisation."):
        backbone = getattr(keras.applications, app.constructor)(
            include_top=False, weights=weights_file or weights, input_shape=(*size, 3), pooling="avg")
    normalization = app.normalization
    if app.imagenet_rescale and weights_file:
        # keras' graph for weights="imagenet" is y = s * (x/255 - m) / sqrt(v); without that final
        # rescale s the same y comes from feeding a*x + b with a = s, b = 255 * m * (1 - s).
        mean = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization)).mean
        s = 1 / np.sqrt(_IMAGENET_STD)
        normalization = Normalization.of(s, 255 * np.ravel(keras.ops.convert_to_numpy(mean)) * (1 - s))
    weights_id = _local_id(weights_file) if weights_file else weights and {"download": weights}
    return _ImageBackbone(backbone, size, normalization, weights_id)


def _hub_image(name: str, weights, weights_file, image_size) -> _ImageBackbone:
    """A keras-hub image backbone; size, normalisation and resize mode from its image converter."""
    with _downloading(name, f"keras-hub preset of image tower {name!r}",
                      "a local keras-hub preset directory as --image-encoder (e.g. "
                      "../shared/weights/efficientnet_lite0_keras), or a keras.applications name with "
                      "--image-weights FILE or --no-pretrained (weights=None in Python); a preset name needs its "
                      "config downloaded even without weights."):
        backbone = keras_hub.models.Backbone.from_preset(name, load_weights=weights is not None and not weights_file)
        if any(isinstance(t, dict) for t in (backbone.input, backbone.output)) or len(backbone.input.shape) != 4:
            raise InvalidArgumentError(f"{name!r} holds a {type(backbone).__name__}, not an image backbone")
        try:
            converter = keras_hub.layers.ImageConverter.from_preset(name)
        except (FileNotFoundError, ValueError):  # no image converter: keras-hub feeds raw pixels
            converter = None
    if weights_file:
        backbone.load_weights(weights_file)
    fixed = tuple(backbone.input.shape[1:3])
    preset_size = tuple(converter.image_size) if getattr(converter, "image_size", None) else None
    size = (image_size,) * 2 if image_size else preset_size or (fixed if None not in fixed else (224, 224))
    if None not in fixed and tuple(size) != fixed:
        raise InvalidArgumentError(f"image tower {name!r} has a fixed input of {fixed} pixels; image_size={image_size} "
                         "does not fit it")
    token_pooling = "cls" if getattr(backbone, "use_class_token", True) else "mean"  # ViT-like outputs
    return _ImageBackbone(
        backbone, tuple(size),
        Normalization.of(getattr(converter, "scale", None), getattr(converter, "offset", None)),
        weights=_local_id(weights_file) if weights_file else weights and _preset_id(name),
        pooling="avg" if len(backbone.output.shape) == 4 else token_pooling,
        resize="crop" if getattr(converter, "crop_to_aspect_ratio", True) else "squash",
        interpolation=getattr(converter, "interpolation", "bilinear"))


def build_image_tower(name: str = "xception", weights: Optional[str] = "imagenet",
                      image_size: Optional[int] = None) -> ImageTower:
    """Image tower by name: `tiny`, a keras.applications name, a keras-hub preset or directory.

    `weights`: "imagenet" (the keras.applications download, or the preset's own weights), a local
    weights file of the backbone (for keras.applications: the no-top file keras would download),
    or None for random initialisation. `image_size` overrides the tower's default size.
    """
    key, weights_file = name.lower(), _weights_file(weights)
    if key == "tiny":
        built = _tiny_image(image_size, weights_file)
    elif key in KERAS_APPLICATIONS:
        built = _application(key, weights, weights_file, image_size)
    elif _is_hub(name, keras_hub.models.ImageClassifier):
        built = _hub_image(name, weights, weights_file, image_size)
    else:
        raise _unknown("image", name, IMAGE_TOWERS)
    inputs = keras.Input((*built.image_size, 3), name="images")
    x = built.model(PixelNormalization(**built.normalization.as_dict(), name="pixel_normalization")(inputs))
    if built.pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif built.pooling:
        x = TokenPooling(built.pooling, name="token_pool")(x)
    model = keras.Model(inputs, x, name=f"image_tower_{Path(name).name}")
    feature_dim = int(model.output.shape[-1])
    spec = {"kind": "image", "name": name, "weights": built.weights, "image_size": list(built.image_size),
            "resize": built.resize, "interpolation": built.interpolation,
            "normalization": built.normalization.as_dict(), "pooling": built.pooling or "avg",
            "feature_dim": feature_dim,
            "build": {"name": _portable(name), "weights": _portable(weights_file) or weights, "image_size": image_size}}
    return ImageTower(name, model, tuple(built.image_size), built.resize, feature_dim, spec)


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
    tokenizer_config = _read_json(name, "tokenizer_config.json") if hf_config else None
    if tokenizer_config and "Bert" in tokenizer_config.get("tokenizer_class", "BertTokenizer"):
        strip = tokenizer_config.get("strip_accents")
        options["strip_accents"] = bool(tokenizer_config.get("do_lower_case", False) if strip is None else strip)
    return options


def _text_pooling(name: str, backbone) -> str:
    """sentence-transformers folders say how they pool; decoders pool their last real token
    (a backbone with a CausalLM task); encoders their [CLS] token."""
    pooling_config = _read_json(name, "1_Pooling/config.json") if _is_local(name) else None
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
    hf_config = _read_json(name, "config.json") if _is_local(name) else None
    hf_config = hf_config if hf_config and "model_type" in hf_config else None
    with _downloading(name, f"keras-hub preset of text tower {name!r}",
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
    return _TextBackbone(backbone, tokenizer, _text_pooling(name, backbone), _preset_id(name) if pretrained else None,
                         activation)


def build_text_tower(name: str = "bert_base_en_uncased", pretrained: bool = True,
                     sequence_length: Optional[int] = None, vocabulary: Optional[list[str]] = None) -> TextTower:
    """Text tower by name: `tiny` (needs `vocabulary`), a keras-hub preset, or a local folder.

    `pretrained=False` keeps the architecture and tokenizer but initialises weights randomly.
    """
    sequence_length = int(sequence_length or DEFAULT_SEQUENCE_LENGTH)
    if name.lower() == "tiny":
        built = _tiny_text(vocabulary, sequence_length)
    elif vocabulary is not None:
        raise InvalidArgumentError(f"vocabulary= is for the tiny text tower; {name!r} brings its own")
    elif _is_hub(name, keras_hub.models.TextClassifier, keras_hub.models.CausalLM):
        built = _hub_text(name, pretrained)
    else:
        raise _unknown("text", name, TEXT_TOWERS)
    max_length = getattr(built.model, "max_sequence_length", None)
    if max_length and sequence_length > max_length:
        raise InvalidArgumentError(f"sequence_length={sequence_length} exceeds {name!r}'s maximum of {max_length}")
    inputs, outputs = built.model.input, built.model.output
    # The backbone's own graph up to the token sequence (BERT's unused NSP pooler left out).
    outputs = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    model = keras.Model(inputs, TokenPooling(built.pooling, name="token_pool")(outputs, inputs["padding_mask"]),
                        name=f"text_tower_{Path(name).name}")
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
            "build": {"name": _portable(name), "pretrained": pretrained, "sequence_length": sequence_length,
                      "vocabulary": list(vocabulary) if vocabulary is not None else None}}
    return TextTower(name, preprocessor, model, sequence_length, feature_dim, spec)

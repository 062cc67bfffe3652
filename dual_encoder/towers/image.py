"""Image towers by name: keras.applications, keras-hub presets or local preset folders, tiny.

Each tower carries the image size and resize mode its checkpoint expects and its own pixel
normalisation (inside the model, so raw 0..255 pixels go in).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

import keras
import keras_hub
import numpy as np

from dual_encoder.errors import InvalidArgumentError
from dual_encoder.towers.layers import PixelNormalization, TokenPooling
from dual_encoder.towers.loading import downloading, is_hub, local_id, local_weights_file, portable, preset_id, unknown_tower

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


TINY_IMAGE = TinyImageConfig()
IMAGE_TOWERS = ("tiny", *KERAS_APPLICATIONS)


@dataclasses.dataclass
class ImageTower:
    name: str
    model: keras.Model  # float32 [B, H, W, 3] in 0..255 -> [B, feature_dim]
    image_size: tuple[int, int]
    resize: str  # "squash" or "crop"
    feature_dim: int
    spec: dict
    # Transformer blocks in order, where `--trainable-layers N` counts blocks instead of weighted layers
    # (the towers of a CLIP / SigLIP preset, towers/clip.py).
    blocks: Optional[list] = None
    # The weights the checkpoint puts after this tower (towers/clip.py `Head`), for the head to start from.
    projection: Optional[object] = None
    # How many leading features are the backbone's own pooled ones (the rest: `feature_stages`); None: all.
    pooled_dim: Optional[int] = None


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
    for stage, filters in enumerate(TINY_IMAGE.filters, 1):  # named as keras.applications names stages
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"block{stage}_conv")(x)
    backbone = keras.Model(inputs, x, name="tiny_convnet")
    if weights_file:
        backbone.load_weights(weights_file)
    return _ImageBackbone(backbone, size, Normalization.of(1 / 255), weights_file and local_id(weights_file), "avg")


def _application(name: str, weights, weights_file, image_size) -> _ImageBackbone:
    """A keras.applications backbone (global-average pooled) and the normalisation before it."""
    app = KERAS_APPLICATIONS[name]
    size = (image_size or app.image_size,) * 2
    with downloading(name, f"ImageNet weights of image tower {name!r}",
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
    weights_id = local_id(weights_file) if weights_file else weights and {"download": weights}
    return _ImageBackbone(backbone, size, normalization, weights_id)


def _hub_image(name: str, weights, weights_file, image_size) -> _ImageBackbone:
    """A keras-hub image backbone; size, normalisation and resize mode from its image converter."""
    with downloading(name, f"keras-hub preset of image tower {name!r}",
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
        weights=local_id(weights_file) if weights_file else weights and preset_id(name),
        pooling="avg" if len(backbone.output.shape) == 4 else token_pooling,
        resize="crop" if getattr(converter, "crop_to_aspect_ratio", True) else "squash",
        interpolation=getattr(converter, "interpolation", "bilinear"))


_STAGE_NAME = re.compile(r"block(\d+)")  # keras.applications and keras-hub CNNs: block1a_..., block4c_add, block14_...


def stage_outputs(backbone: keras.Model, stages: int, name: str) -> list:
    """The outputs of the last layer of each of the backbone's last `stages` stages below its
    top stage (stages as the layer names number them: block1..., block2..., ...), lowest first."""
    last, spatial = {}, [layer for layer in backbone.layers if len(layer.output.shape) == 4]
    for layer in spatial:
        match = _STAGE_NAME.match(layer.name)
        if match:
            last[int(match.group(1))] = layer
    # A numbered stage that ends the backbone (Xception's block14) is its top, already in the features.
    below_top = [last[n] for n in sorted(last) if last[n] is not spatial[-1]]
    if len(below_top) < stages:
        raise InvalidArgumentError(f"--image-feature-stages {stages}: image tower {name!r} has {len(below_top)} stages "
                                   "below its top whose layers are named block1..., block2..., ...; pass at most that "
                                   "many, or 0")
    return [layer.output for layer in below_top[len(below_top) - stages:]]


def build_image_tower(name: str = "xception", weights: Optional[str] = "imagenet",
                      image_size: Optional[int] = None, feature_stages: int = 0) -> ImageTower:
    """Image tower by name: `tiny`, a keras.applications name, a keras-hub preset or directory.

    `weights`: "imagenet" (the keras.applications download, or the preset's own weights), a local
    weights file of the backbone (for keras.applications: the no-top file keras would download),
    or None for random initialisation. `image_size` overrides the tower's default size.
    `feature_stages` N > 0 appends to the pooled top features the average-pooled outputs of the
    N stages below the top: mid-level colour, texture and part features that captions name ("a
    red shirt") and ImageNet's top layer has learned to ignore. The top's features come first,
    so a classifier on them (the class prior) reads the leading `pooled_dim` features unchanged.
    """
    key, weights_file = name.lower(), local_weights_file(weights)
    if key == "tiny":
        built = _tiny_image(image_size, weights_file)
    elif key in KERAS_APPLICATIONS:
        built = _application(key, weights, weights_file, image_size)
    elif is_hub(name, keras_hub.models.ImageClassifier):
        built = _hub_image(name, weights, weights_file, image_size)
    else:
        raise unknown_tower("image", name, IMAGE_TOWERS)
    inputs = keras.Input((*built.image_size, 3), name="images")
    pixels = PixelNormalization(**built.normalization.as_dict(), name="pixel_normalization")(inputs)
    if feature_stages and built.pooling not in ("avg", None):
        raise InvalidArgumentError(f"--image-feature-stages needs a convolutional image tower; {name!r} gives tokens")
    backbone = built.model
    if feature_stages:  # the same layers, with the chosen stages' outputs exposed too
        backbone = keras.Model(backbone.inputs, [backbone.output, *stage_outputs(backbone, feature_stages, name)],
                               name=f"{backbone.name}_stages")
        x, *stages = backbone(pixels)
    else:
        x, stages = backbone(pixels), []
    if built.pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif built.pooling:
        x = TokenPooling(built.pooling, name="token_pool")(x)
    pooled_dim = int(x.shape[-1])
    if stages:
        x = keras.layers.Concatenate(name="stage_features")(
            [x, *(keras.layers.GlobalAveragePooling2D(name=f"stage_pool_{i}")(s) for i, s in enumerate(stages, 1))])
    model = keras.Model(inputs, x, name=f"image_tower_{Path(name).name}")
    feature_dim = int(model.output.shape[-1])
    spec = {"kind": "image", "name": name, "weights": built.weights, "image_size": list(built.image_size),
            "resize": built.resize, "interpolation": built.interpolation,
            "normalization": built.normalization.as_dict(), "pooling": built.pooling or "avg",
            "feature_dim": feature_dim,
            "build": {"name": portable(name), "weights": portable(weights_file) or weights, "image_size": image_size}}
    if feature_stages:  # only then, so the caches of towers without stages keep their identity
        spec["feature_stages"] = spec["build"]["feature_stages"] = feature_stages
        spec["pooled_dim"] = pooled_dim
    return ImageTower(name, model, tuple(built.image_size), built.resize, feature_dim, spec, pooled_dim=pooled_dim)

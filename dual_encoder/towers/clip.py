"""Both towers from one keras-hub CLIP or SigLIP preset: the starting point of `train.py --init`.

The vision encoder becomes the image tower and the text encoder the text tower, each with the
checkpoint's own preprocessing (image converter size, crop or squash, scale and offset; the
tokenizer, its lower-casing or SigLIP's canonicalisation, start/end tokens and sequence length).
Their own projection layers become the heads: CLIP's `vision_projection` / `text_projection`
(no bias), SigLIP's text `head` (SigLIP's vision encoder ends in its attention-pooling head and
has no projection, so its head is a linear layer that starts as the identity). The logit scale,
and SigLIP's bias, come from the checkpoint too: before any step the dual encoder *is* the
pretrained model, embedding for embedding.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Optional

import keras
import keras_hub
import numpy as np

from dual_encoder.errors import InvalidArgumentError
from dual_encoder.towers.image import ImageTower, Normalization
from dual_encoder.towers.layers import PixelNormalization, TextPreprocessor, TokenPooling
from dual_encoder.towers.loading import downloading, is_hub, portable, preset_id, unknown_tower
from dual_encoder.towers.text import TextTower


@dataclasses.dataclass(frozen=True)
class Family:
    """What differs between the checkpoints `--init` takes."""

    preprocessor: str  # keras-hub preprocessor class (tokenizer, sequence length, image converter)
    loss: str  # the loss the checkpoint was trained with
    normalize: Optional[str]  # TextPreprocessor's text normalisation


FAMILIES = {
    "CLIPBackbone": Family("CLIPPreprocessor", "infonce", "lowercase"),
    "SigLIPBackbone": Family("SigLIPPreprocessor", "siglip", "siglip"),
}
INSTEAD = ("a local CLIP or SigLIP preset folder as --init DIR (saved with backbone.save_to_preset(DIR) and "
           "preprocessor.save_to_preset(DIR)); a preset name needs its files downloaded once, online")


@dataclasses.dataclass
class Head:
    """A head's starting weights: `kernel` [features, projection_dim] and `bias` (None: no bias)."""

    kernel: np.ndarray
    bias: Optional[np.ndarray] = None


@dataclasses.dataclass
class PresetPair:
    """Everything `--init` takes from one checkpoint."""

    image: ImageTower
    text: TextTower
    heads: dict  # "image" / "text" -> Head
    logit_scale: float
    logit_bias: Optional[float]  # SigLIP only
    loss: str
    backbone: str  # the keras-hub class, e.g. CLIPBackbone

    @property
    def projection_dim(self) -> int:
        return int(self.heads["text"].kernel.shape[-1])


def is_preset_pair(name: str) -> bool:
    """A local folder, a kaggle:// / hf:// handle, or a built-in CLIP / SigLIP preset name."""
    return is_hub(name, keras_hub.models.CLIPBackbone, keras_hub.models.SigLIPBackbone)


def _numpy(weight) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(weight))


def _load(name: str, pretrained: bool):
    """(backbone, text preprocessor without images, image converter), or one clear error."""
    if not is_preset_pair(name):
        raise unknown_tower("--init", name, ("a keras-hub CLIP or SigLIP preset name", "a local preset folder"))
    with downloading(name, f"keras-hub preset {name!r} (--init)", INSTEAD):
        backbone = keras_hub.models.Backbone.from_preset(name, load_weights=pretrained)
        family = FAMILIES.get(type(backbone).__name__)
        if family is None:
            raise InvalidArgumentError(f"--init {name}: holds a {type(backbone).__name__}; --init takes a CLIP or SigLIP "
                                       f"preset ({', '.join(FAMILIES)})")
        preprocessor_cls = getattr(keras_hub.models, family.preprocessor)
        preprocessor = preprocessor_cls.from_preset(name, image_converter=None)
        converter = preprocessor_cls.image_converter_cls.from_preset(name)
    return backbone, family, preprocessor, converter


def _image_tower(name: str, backbone, converter, pretrained: bool, checkpoint: dict, head: Head) -> ImageTower:
    """Pixels 0..255 -> the converter's scale/offset -> the vision encoder -> CLIP's class token
    (SigLIP's encoder pools itself with its attention head)."""
    encoder = backbone.vision_encoder
    size = tuple(int(s) for s in encoder.image_shape[:2])
    config = converter.get_config()
    normalization = Normalization.of(config.get("scale"), config.get("offset"))
    inputs = keras.Input((*size, 3), name="images")
    x = encoder({"images": PixelNormalization(**normalization.as_dict(), name="pixel_normalization")(inputs)})
    pooling = "cls" if len(x.shape) == 3 else None
    if pooling:
        x = TokenPooling("cls", name="token_pool")(x)  # CLIPVisionPooler: the class token
    model = keras.Model(inputs, x, name=f"image_tower_{Path(name).name}")
    resize = "crop" if config.get("crop_to_aspect_ratio", True) else "squash"
    spec = {"kind": "image", "name": name, "init": checkpoint, "weights": preset_id(name) if pretrained else None,
            "image_size": list(size), "resize": resize, "interpolation": config.get("interpolation", "bilinear"),
            "normalization": normalization.as_dict(), "pooling": pooling or "attention head",
            "feature_dim": int(model.output.shape[-1]),
            "build": {"init": portable(name), "pretrained": pretrained}}
    return ImageTower(name, model, size, resize, spec["feature_dim"], spec, blocks=list(encoder.encoder_layers),
                      projection=head)


def _text_features(backbone) -> keras.Model:
    """token ids -> the features the checkpoint's text projection reads: CLIP pools at the highest
    token id (its end token); SigLIP's encoder reads its last position, then its `head`, left out here."""
    encoder = backbone.text_encoder
    if isinstance(backbone, keras_hub.models.SigLIPBackbone):
        return keras.Model(encoder.input, encoder.head.input, name="text_features")
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    pooled = backbone.text_pooler(encoder({"token_ids": token_ids}), token_ids)
    return keras.Model({"token_ids": token_ids}, pooled, name="text_features")


def _text_tower(name: str, backbone, family: Family, preprocessor, pretrained: bool, sequence_length: Optional[int],
                checkpoint: dict, head: Head) -> TextTower:
    encoder = backbone.text_encoder
    length = int(sequence_length or preprocessor.sequence_length)
    if length > encoder.max_sequence_length:
        raise InvalidArgumentError(f"--sequence-length {length} exceeds the {encoder.max_sequence_length} positions of "
                                   f"--init {name}'s text encoder")
    inputs = {"token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
              "padding_mask": keras.Input((None,), dtype="int32", name="padding_mask")}
    # The padding mask is unused (CLIP's attention is causal and pools at the end token; SigLIP's
    # attends to its padding as it was trained), but every text tower takes one.
    features = _text_features(backbone)({"token_ids": inputs["token_ids"]})
    model = keras.Model(inputs, features, name=f"text_tower_{Path(name).name}")
    config = preprocessor.get_config()
    text_preprocessor = TextPreprocessor(preprocessor.tokenizer, length, segment_ids=False,
                                         add_start=config.get("add_start_token", True),
                                         add_end=config.get("add_end_token", True),
                                         normalize=family.normalize if config.get("to_lower", config.get(
                                             "canonicalize_text", True)) else None,
                                         name="text_preprocessor")
    vocabulary = [str(token) for token in preprocessor.tokenizer.get_vocabulary()]
    spec = {"kind": "text", "name": name, "init": checkpoint, "weights": preset_id(name) if pretrained else None,
            "sequence_length": length, "pooling": "end token" if family.loss == "infonce" else "last position",
            "normalize": text_preprocessor.normalize,
            "tokenizer": {"class": type(preprocessor.tokenizer).__name__, "vocabulary_size": len(vocabulary),
                          "vocabulary_sha256": hashlib.sha256("\n".join(vocabulary).encode()).hexdigest()},
            "feature_dim": int(model.output.shape[-1]),
            "build": {"init": portable(name), "pretrained": pretrained, "sequence_length": sequence_length}}
    return TextTower(name, text_preprocessor, model, length, spec["feature_dim"], spec, blocks=list(encoder.encoder_layers),
                     projection=head)


def _heads(backbone, image_dim: int) -> dict:
    if isinstance(backbone, keras_hub.models.CLIPBackbone):
        return {"image": Head(_numpy(backbone.vision_projection.kernel)), "text": Head(_numpy(backbone.text_projection.kernel))}
    dense = backbone.text_encoder.head
    identity = Head(np.eye(image_dim, dtype=np.float32), np.zeros(image_dim, np.float32))
    return {"image": identity, "text": Head(_numpy(dense.kernel), _numpy(dense.bias))}


def load_preset_pair(name: str, pretrained: bool = True, sequence_length: Optional[int] = None) -> PresetPair:
    """Both towers, the heads' starting weights, the logit scale (and bias) of a CLIP / SigLIP
    preset (a name, a kaggle:// or hf:// handle, or a local preset folder).

    `pretrained=False` keeps the architecture and preprocessing with random weights (the config
    must still be read). `sequence_length` overrides the checkpoint's own (CLIP's causal text
    encoder gives the same features for any length that holds the caption; SigLIP's does not).
    Each tower's spec records the checkpoint under "init" (its class, loss, logit scale and bias)
    and `tower.projection` holds its head's starting weights.
    """
    name = str(name)
    backbone, family, preprocessor, converter = _load(name, pretrained)
    scores = backbone.get_layer("clip_head" if family.loss == "infonce" else "siglip_head")
    checkpoint = {"backbone": type(backbone).__name__, "loss": family.loss, "logit_scale": float(_numpy(scores.logit_scale)),
                  "logit_bias": float(_numpy(scores.logit_bias)) if hasattr(scores, "logit_bias") else None}
    image_dim = int(backbone.vision_encoder.output.shape[-1])
    heads = _heads(backbone, image_dim)
    image = _image_tower(name, backbone, converter, pretrained, checkpoint, heads["image"])
    text = _text_tower(name, backbone, family, preprocessor, pretrained, sequence_length, checkpoint, heads["text"])
    return PresetPair(image, text, heads, checkpoint["logit_scale"], checkpoint["logit_bias"], family.loss,
                      checkpoint["backbone"])

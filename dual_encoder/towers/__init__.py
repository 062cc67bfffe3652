"""Image and text towers by name or local preset folder, one module per job.

`layers` (the Keras layers inside every tower), `loading` (local folders, offline downloads,
identities), `image` and `text` (the towers by name), `clip` (both towers of a CLIP / SigLIP
checkpoint, for `--init`), `features` (a frozen text tower's
features by length bucket), `frozen_graph` (a frozen tower as a constant graph with its batch
norms folded into the convs), `freezing` (what trains) and `registry` (a tower from its spec).
The names below are the stage's public API.
"""

from dual_encoder.towers.clip import FAMILIES, Head, PresetPair, is_preset_pair, load_preset_pair
from dual_encoder.towers.features import TextFeatures, batch_length
from dual_encoder.towers.freezing import freeze
from dual_encoder.towers.image import (
    IMAGE_TOWERS,
    KERAS_APPLICATIONS,
    TINY_IMAGE,
    ImageTower,
    Normalization,
    TinyImageConfig,
    build_image_tower,
)
from dual_encoder.towers.layers import DEFAULT_SEQUENCE_LENGTH, PixelNormalization, TextPreprocessor, TokenPooling
from dual_encoder.towers.loading import PretrainedWeightsUnavailable
from dual_encoder.towers.registry import from_spec
from dual_encoder.towers.text import (
    SPECIAL_TOKENS,
    TEXT_TOWERS,
    TINY_TEXT,
    TextTower,
    TinyTextConfig,
    build_text_tower,
    build_vocabulary,
)

__all__ = [
    "DEFAULT_SEQUENCE_LENGTH", "FAMILIES", "Head", "IMAGE_TOWERS", "KERAS_APPLICATIONS", "SPECIAL_TOKENS", "TEXT_TOWERS",
    "TINY_IMAGE", "TINY_TEXT", "ImageTower", "Normalization", "PixelNormalization", "PresetPair",
    "PretrainedWeightsUnavailable", "TextFeatures", "TextPreprocessor", "TextTower", "TinyImageConfig", "TinyTextConfig",
    "TokenPooling", "build_image_tower", "build_text_tower", "build_vocabulary", "freeze", "from_spec", "is_preset_pair",
    "batch_length", "load_preset_pair",
]

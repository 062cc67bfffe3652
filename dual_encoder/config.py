"""Run configuration: dataclasses and named presets, shared by every stage (imports none of them).

Every training knob lives here once, with its help text; the command-line layer
(`cli/flags.py`) turns the fields into flags, so `--help` and the presets can never disagree.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

from dual_encoder.errors import InvalidArgumentError

# Defaults shared by write_shards, `python -m dual_encoder.data` and train.py (DataConfig), so
# that every tool writes the same split of the same source.
VAL_FRACTION, SPLIT_SEED, IMAGES_PER_SHARD = 0.2, 0, 2000
LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP: temperature 0.07


def _field(default, help: str, **metadata):
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass
class ModelConfig:
    image_encoder: str = _field("xception", "image tower: a name (xception, resnet50, efficientnetb0, a keras-hub preset, tiny) "
                                            "or a local keras-hub preset directory")
    text_encoder: str = _field("bert_base_en_uncased", "text tower: a keras-hub preset name (bert_base_en_uncased, "
                                                       "bert_small_en_uncased, gpt2_base_en, tiny) or a local preset / Hugging "
                                                       "Face directory")
    pretrained: bool = _field(True, "load pretrained tower weights (--no-pretrained: random initialisation, nothing to download)")
    image_weights: Optional[str] = _field(None, "a local weights file for a keras.applications image tower, instead of "
                                                "downloading ImageNet weights")
    image_size: Optional[int] = _field(None, "image side in pixels (default: the image tower's own)")
    sequence_length: Optional[int] = _field(None, "caption length in tokens (default: chosen from the data, the 99th percentile "
                                                  "of token counts)")
    vocabulary_size: int = _field(1000, "WordPiece vocabulary size of the tiny text tower (built from the training captions)")
    projection_dim: int = _field(256, "size of the shared embedding space")
    head: str = _field("mlp", "projection head: mlp (Dense-GELU-Dense-Dropout-residual-LayerNorm, the reference) or "
                              "linear", choices=("mlp", "linear"))
    dropout: float = _field(0.1, "dropout in the projection heads")
    logit_scale: float = _field(LOGIT_SCALE_INIT, "initial log logit scale (log(1/0.07) as in CLIP)")
    learn_temperature: bool = _field(True, "learn the temperature (--no-learn-temperature keeps --logit-scale fixed)")
    loss: str = _field("infonce", "contrastive loss: infonce (symmetric CLIP loss), soft_target (Keras example), "
                                  "siglip", choices=("infonce", "soft_target", "siglip"))
    train_image_tower: bool = _field(False, "fine-tune the image tower (frozen by default, as in the reference recipe)")
    train_text_tower: bool = _field(False, "fine-tune the text tower (frozen by default)")
    trainable_layers: Optional[int] = _field(None, "when fine-tuning a tower, train only its last N layers")
    class_prior: bool = _field(False, "ConSE class prior: map each image also to the text features of the top ImageNet classes "
                                      "its own pretrained classifier predicts, so zero-shot reaches concepts the captions never "
                                      "name (needs a keras-hub image preset with its ImageNet head)")
    class_prior_top_k: int = _field(10, "classes averaged by the class prior, weighted by their softmax probability")


@dataclasses.dataclass
class DataConfig:
    captions_per_image: int = _field(3, "(image, caption) pairs per image and epoch, captions sampled without replacement")
    val_fraction: float = _field(VAL_FRACTION, "fraction of images (never captions) held out for validation when "
                                                         "writing shards")
    split_seed: int = _field(SPLIT_SEED, "seed of that train/val split by image (python -m dual_encoder.data --seed "
                                                   "has the same default, so both tools write the same split)")
    images_per_shard: int = _field(IMAGES_PER_SHARD, "images per TFRecord shard when writing shards")
    max_side: Optional[int] = _field(None, "re-encode images whose longer side exceeds N pixels when writing shards")
    shuffle_buffer: int = _field(10_000, "pairs in the shuffle buffer")
    cache: bool = _field(False, "keep parsed shards in memory after the first epoch")
    feature_cache: bool = _field(True, "with both towers frozen, compute their features once, store them next to the shards and "
                                       "train the heads on them (--no-feature-cache: recompute every epoch)")


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = _field(256, "global batch size (pairs); every other pair in the batch is a negative")
    epochs: int = _field(8, "maximum number of epochs")
    learning_rate: float = _field(1e-3, "AdamW learning rate")
    weight_decay: float = _field(1e-3, "AdamW weight decay (never applied to the temperature, biases or norms)")
    early_stopping_patience: int = _field(5, "stop after N epochs without val_loss improvement (best weights restored)")
    reduce_lr_patience: int = _field(3, "multiply the learning rate by --reduce-lr-factor after N epochs without val_loss "
                                        "improvement")
    reduce_lr_factor: float = _field(0.2, "factor applied by ReduceLROnPlateau")
    seed: int = _field(42, "random seed (weights, shuffling, caption sampling; the data split has --split-seed)")
    strategy: str = _field("default", "tf.distribute strategy: default (one device), mirrored (all GPUs here), multiworker "
                                      "(TF_CONFIG)", choices=("default", "mirrored", "multiworker"))
    mixed_precision: Optional[str] = _field(None, "Keras dtype policy for GPUs, e.g. mixed_float16 or mixed_bfloat16 (slower on "
                                                  "CPU)")
    jit_compile: bool = _field(False, "compile the train step with XLA (good for text towers and GPUs; slow for Xception on CPU)")


@dataclasses.dataclass
class RunConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    preset: str = "reference"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _beside_repository(path: str) -> str:
    """`path` as written when it exists from the working directory (the README's commands run in
    the repository); otherwise the same path from the repository, so a notebook one folder
    deeper still finds ../shared."""
    if Path(path).exists():
        return path
    from_repository = Path(__file__).resolve().parents[1] / path
    return str(from_repository.resolve()) if from_repository.exists() else path


# The two pretrained towers that load offline (../shared/weights, next to the repository).
SHARED_IMAGE_ENCODER = "../shared/weights/efficientnet_lite0_keras"
SHARED_TEXT_ENCODER = "../shared/weights/all-minilm-l6-v2"


def reference() -> RunConfig:
    """The recipe of the Monti & Mariani report: Xception + BERT base (frozen here), MLP heads
    into 256-d (dropout 0.1), symmetric InfoNCE with a learnable temperature, AdamW 1e-3 / wd 1e-3,
    batch 256, 8 epochs, 3 captions per image, 20 % validation, early stopping 5,
    ReduceLROnPlateau 3 / 0.2. (Not the keras.io example: small BERT, soft-target loss with a fixed
    temperature, 2 captions, 5 epochs.)

    python train.py --coco-dir DIR --split train2017 --captions-per-image 3
    """
    return RunConfig(preset="reference")


def sample() -> RunConfig:
    """Tiny towers on the built-in generated sample: offline, a few minutes on 2 CPU cores.

    python train.py --captions-per-image 3
    Expected: validation text->image R@5 about 75 % (chance is 5/600 images = 0.8 %), about 1.5 min on 2 CPU cores.
    """
    return RunConfig(
        # Random towers must learn, so both train; the linear head escapes the initial plateau in
        # ~100 steps where the MLP head stalls for many epochs on this data.
        model=ModelConfig(image_encoder="tiny", text_encoder="tiny", pretrained=False, image_size=64, projection_dim=64,
                          head="linear", train_image_tower=True, train_text_tower=True),
        train=TrainConfig(batch_size=64, epochs=8, learning_rate=2e-3, early_stopping_patience=3, reduce_lr_patience=2),
        preset="sample",
    )


def lit_small() -> RunConfig:
    """Frozen pretrained towers, linear heads trained on little data (LiT-style, both towers locked):
    EfficientNet-Lite0 + all-MiniLM-L6-v2 from ../shared/weights, the ConSE class prior (the image
    tower's own ImageNet classifier bridges images into text space, see class_prior.py), linear
    heads into 256-d, fixed logit scale 12, AdamW lr 1e-2 (wd 1e-3), batch 128, all 5 captions per
    image, at most 20 epochs with early stopping on the validation loss (patience 3, best weights kept).

    python -m dual_encoder.data --coco-dir ../shared/data/coco_mini --split train2017 --out tfrecords/coco_train2017
    python -m dual_encoder.data --csv ../shared/data/fashion_small/styles.csv --image-column id \
        --image-template 'images/{}.jpg' --caption-column productDisplayName --max-side 400 --out tfrecords/fashion_small
    python train.py --preset lit-small --tfrecords tfrecords/coco_train2017 tfrecords/fashion_small --output-dir runs/lit-small

    Expected (benchmarks/quality.py, mean over seeds 0-2, on data never trained on; 2-core CPU):
    coco_mini val2017 (159 photos) text->image R@1/5/10 ~ 22/58/73 % (chance R@5 3.1 %), image->text
    R@5 ~ 57 %; animals10_proxy zero-shot accuracy ~ 70 +- 5 % (chance 10 %); held-out fashion
    articleType zero-shot ~ 59 % (63 classes), ~ 82 % (the 19 with >= 5 images). Without the class
    prior: 46 % coco R@5 and 28 % animals (classes no training caption names are never right).
    Early stopping ends at ~8 epochs; feature extraction ~25 s once, then ~20 s of head training.
    """
    # Chosen on validation splits only (fashion val + the held-out 20 % of coco train2017, over
    # 5 different coco splits x 3 seeds): lr 1e-2 with batch 128 beat lr 1e-3 / batch 64 by ~6 points of
    # coco R@1 and ~7 of zero-shot object accuracy; the MLP head retrieved as well but classified
    # worse zero-shot; fixed scales 10-14 and a learnable one (init 12) tied, 20 was slightly worse;
    # weight decay up to 5 and projection 128/512 changed nothing beyond the noise (about +-4
    # points); 3 captions per image lost ~6 points of zero-shot accuracy to 5. The class prior
    # (top-10, as in the ConSE paper) raised validation text->image R@1 from 31.8 to 35.5 % (R@5 tied).
    return RunConfig(
        model=ModelConfig(image_encoder=_beside_repository(SHARED_IMAGE_ENCODER),
                          text_encoder=_beside_repository(SHARED_TEXT_ENCODER), head="linear",
                          logit_scale=math.log(12.0), learn_temperature=False, class_prior=True),
        data=DataConfig(captions_per_image=5),
        train=TrainConfig(batch_size=128, epochs=20, learning_rate=1e-2, weight_decay=1e-3, early_stopping_patience=3,
                          reduce_lr_patience=2),
        preset="lit-small",
    )


PRESETS = {"reference": reference, "sample": sample, "lit-small": lit_small}


def get_preset(name: str) -> RunConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise InvalidArgumentError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None

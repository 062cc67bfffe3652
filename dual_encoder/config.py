"""Run configuration: dataclasses and named presets, shared by every stage (imports none of them).

Every training knob lives here once, with its help text and the values it accepts; the
command-line layer (`cli/flags.py`) turns the fields into flags, so `--help`, the presets and
the checks can never disagree. Each field is checked whenever it is set (at construction, by
`apply_overrides`, or later in a notebook: `run.train.epochs = 0` raises at once), so a bad value
is refused with the flag's name and range instead of surfacing later inside TensorFlow;
`validate()` adds the checks that span fields.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from pathlib import Path
from typing import Optional

from dual_encoder.errors import InvalidArgumentError

# Defaults shared by write_shards, `python -m dual_encoder.data` and train.py (DataConfig), so
# that every tool writes the same split of the same source.
VAL_FRACTION, SPLIT_SEED, IMAGES_PER_SHARD = 0.2, 0, 2000
LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP: temperature 0.07
LOGIT_SCALE_MAX = math.log(100.0)  # CLIP clamps the scale at 100; the model clips the learned log scale to [0, this]

# --- what values are accepted ------------------------------------------------------------
INT32_MAX = 2**31 - 1  # TensorFlow takes counts, sizes and shapes as int32
SEED_MAX = 2**32 - 1  # numpy's seed range (keras.utils.set_random_seed seeds numpy too)
# An 8192 x 8192 RGB float32 image is 805 MB before the tower's first layer: one such image fills
# a GPU, and no published image tower runs at even a quarter of that side.
MAX_IMAGE_SIDE = 8192
# Position embeddings of this many tokens; the longest published text towers (jina-clip) stop here.
MAX_SEQUENCE_LENGTH = 8192
# A head's weights are tower width x this: CLIP's widest embedding is 1024; 65536 from a 768-wide tower is 200 MB.
MAX_EMBEDDING_DIM = 65536
MIN_SEQUENCE_LENGTH = 3  # the start and end markers plus one real token
MIN_VOCABULARY_SIZE = 6  # the tiny tower's 5 special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) plus one word
# Keras dtype policies that train: float dtypes and their mixed variants (no quantized ones).
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16", "float16", "bfloat16", "float64")
LOSS_NAMES = ("infonce", "soft_target", "siglip")
MAX_LR_TIMES_DECAY = 1.0  # AdamW removes lr x wd of each weight per step: at 1 every matrix is zeroed, above it flips


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field: batch_size -> --batch-size."""
    return "--" + field_name.replace("_", "-")


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) and not float(value).is_integer() else str(int(value))


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values one numeric setting accepts, written once beside it: checked on every
    assignment, quoted by the error and shown by --help.

    `integer`: an int (bool refused, numpy integers converted); otherwise any finite real number.
    `optional`: None is accepted too (the setting is then chosen elsewhere, e.g. from the tower).
    """

    low: float
    high: float = INT32_MAX
    low_open: bool = False
    high_open: bool = False
    integer: bool = True
    optional: bool = False

    def interval(self) -> str:
        """'[1, 2147483647]', '[0, 1)', '(0, 1]': the range in the usual notation."""
        return f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        return f"{'unset (None) or ' if self.optional else ''}{kind} in {self.interval()}"

    def problem(self, value) -> Optional[str]:
        """Why `value` is refused ("must be an integer in [1, 8192], got 0"), or None when accepted."""
        if value is None and self.optional:
            return None
        right_type = isinstance(value, numbers.Integral if self.integer else numbers.Real) and not isinstance(value, bool)
        if not right_type:
            return f"must be {self.describe()}, got {value!r} (a {type(value).__name__})"
        if not self._contains(self.plain(value)):
            return f"must be {self.describe()}, got {self.plain(value)!r}"
        return None

    def plain(self, value):
        """`value` as stored: a Python int or float (numpy scalars converted), None kept."""
        return None if value is None else int(value) if self.integer else float(value)

    def _contains(self, value) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def check(self, value, name: str):
        """`value` as a plain int or float (None where optional); InvalidArgumentError naming `name` otherwise."""
        problem = self.problem(value)
        if problem:
            raise InvalidArgumentError(f"{name} {problem}")
        return self.plain(value)


COUNT = Bounds(1)  # anything counted: epochs, images per shard, batch sizes of evaluation
PATIENCE = Bounds(0)  # epochs to wait; 0 acts on the first epoch without improvement
SEED = Bounds(0, SEED_MAX)
FRACTION = Bounds(0, 1, high_open=True, integer=False)  # a share held out or dropped; all of it cannot work
IMAGE_SIDE = Bounds(1, MAX_IMAGE_SIDE)


def _field(default, help: str, bounds: Optional[Bounds] = None, **metadata):
    metadata = {"help": help, **metadata, **({"bounds": bounds} if bounds else {})}
    return dataclasses.field(default=default, metadata=metadata)


def field_kind(field: dataclasses.Field) -> tuple[type, bool]:
    """(int, float, str or bool; whether None is accepted) from the annotation, e.g. 'Optional[int]'."""
    text = str(field.type)
    optional = text.startswith("Optional[")
    name = text.removeprefix("Optional[").rstrip("]")
    return {"int": int, "float": float, "bool": bool, "str": str}[name], optional


def field_bounds(field: dataclasses.Field) -> Optional[Bounds]:
    """The field's Bounds with its kind (integer or not, optional or not) taken from its annotation."""
    bounds = field.metadata.get("bounds")
    if bounds is None:
        return None
    kind, optional = field_kind(field)
    return dataclasses.replace(bounds, integer=kind is int, optional=optional)


def bounds_of(cls: type, name: str) -> Optional[Bounds]:
    """The range of one field by name, e.g. bounds_of(DataConfig, "split_seed"), for flags that share it."""
    return field_bounds(cls.__dataclass_fields__[name])


def field_problem(field: dataclasses.Field, value) -> tuple[Optional[str], object]:
    """(why `value` cannot be this field's value or None, the value as stored: plain int/float/str)."""
    bounds = field_bounds(field)
    if bounds is not None:
        problem = bounds.problem(value)
        return problem, value if problem else bounds.plain(value)
    kind, optional = field_kind(field)
    if value is None and optional:
        return None, None
    if kind is bool:  # a string such as "no" would otherwise read as True
        return None if isinstance(value, bool) else f"must be True or False, got {value!r}", value
    value = os.fspath(value) if isinstance(value, os.PathLike) else value  # a Path names a tower folder as well as a str
    return _text_problem(value, field.metadata.get("choices"), optional), value


def _text_problem(value, choices: Optional[tuple], optional: bool) -> Optional[str]:
    if not isinstance(value, str) or not value:
        return f"must be {'unset (None) or ' if optional else ''}a non-empty string, got {value!r}"
    if choices and value not in choices:
        return f"must be one of {', '.join(choices)}, got {value!r}"
    return None


class _Checked:
    """Checks every field whenever it is set: at construction and on any later assignment."""

    def __setattr__(self, name: str, value) -> None:
        field = self.__dataclass_fields__.get(name)
        if field is not None:
            problem, value = field_problem(field, value)
            if problem:
                raise InvalidArgumentError(f"{flag_name(name)} ({type(self).__name__}.{name}) {problem}")
        object.__setattr__(self, name, value)

    def validate(self) -> "_Checked":
        """Checks every field again (values written past `__setattr__`) and the rules between fields; returns self."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name))
        self._check_together()
        return self

    def _check_together(self) -> None:
        """Rules that span several fields; checked by validate() only, so fields can be set in any order."""


@dataclasses.dataclass
class ModelConfig(_Checked):
    image_encoder: str = _field("xception", "image tower: a name (xception, resnet50, efficientnetb0, a keras-hub preset, tiny) "
                                            "or a local keras-hub preset directory")
    text_encoder: str = _field("bert_base_en_uncased", "text tower: a keras-hub preset name (bert_base_en_uncased, "
                                                       "bert_small_en_uncased, gpt2_base_en, tiny) or a local preset / Hugging "
                                                       "Face directory")
    pretrained: bool = _field(True, "load pretrained tower weights (--no-pretrained: random initialisation, nothing to download)")
    image_weights: Optional[str] = _field(None, "a local weights file for a keras.applications image tower, instead of "
                                                "downloading ImageNet weights")
    image_size: Optional[int] = _field(None, "image side in pixels (default: the image tower's own)", IMAGE_SIDE)
    sequence_length: Optional[int] = _field(None, "caption length in tokens (default: chosen from the data, the 99th percentile "
                                                  "of token counts)", Bounds(MIN_SEQUENCE_LENGTH, MAX_SEQUENCE_LENGTH))
    vocabulary_size: int = _field(1000, "WordPiece vocabulary size of the tiny text tower (built from the training captions)",
                                  Bounds(MIN_VOCABULARY_SIZE))
    projection_dim: int = _field(256, "size of the shared embedding space", Bounds(1, MAX_EMBEDDING_DIM))
    head: str = _field("mlp", "projection head: mlp (Dense-GELU-Dense-Dropout-residual-LayerNorm, the reference) or "
                              "linear", choices=("mlp", "linear"))
    dropout: float = _field(0.1, "dropout in the projection heads", FRACTION)
    image_feature_stages: int = _field(0, "also average-pool the outputs of the image tower's last N stages below its top "
                                          "and append them to its features: mid-level colour and texture that captions "
                                          "name (CNN towers whose layers are named block1..., block2..., as keras.applications' "
                                          "and keras-hub's EfficientNets are)", PATIENCE)
    text_feature_layers: int = _field(0, "also pool the N transformer blocks below the text tower's top the way the top is "
                                         "pooled, and append them to its features", PATIENCE)
    feature_dropout: float = _field(0.0, "dropout on the tower features as they enter the heads, in training only: "
                                         "regularises heads trained on frozen (cached) features, which otherwise fit the "
                                         "training pairs within a few epochs", FRACTION)
    logit_scale: float = _field(LOGIT_SCALE_INIT, "initial log logit scale (log(1/0.07) as in CLIP; the model keeps it "
                                                  "within [0, log 100])", Bounds(0, LOGIT_SCALE_MAX))
    learn_temperature: bool = _field(True, "learn the temperature (--no-learn-temperature keeps --logit-scale fixed)")
    loss: Optional[str] = _field("infonce", "contrastive loss: infonce (symmetric CLIP loss), soft_target (Keras example), "
                                            "siglip; unset with --init: the checkpoint's own (infonce for CLIP, siglip for "
                                            "SigLIP)", choices=LOSS_NAMES)
    train_image_tower: bool = _field(False, "fine-tune the image tower (frozen by default, as in the reference recipe)")
    train_text_tower: bool = _field(False, "fine-tune the text tower (frozen by default)")
    trainable_layers: Optional[int] = _field(None, "when fine-tuning a tower, train only its last N layers "
                                                   "(0: none of them)", PATIENCE)
    class_prior: bool = _field(False, "ConSE class prior: map each image also to the text features of the top ImageNet classes "
                                      "its own pretrained classifier predicts, so zero-shot reaches concepts the captions never "
                                      "name (needs a keras-hub image preset with its ImageNet head)")
    class_prior_top_k: int = _field(10, "classes averaged by the class prior, weighted by their softmax probability "
                                        "(at most the classifier's class count)", COUNT)

    def _check_together(self) -> None:
        if self.trainable_layers is not None and not (self.train_image_tower or self.train_text_tower):
            raise InvalidArgumentError(f"--trainable-layers {self.trainable_layers} needs --train-image-tower and/or "
                                       "--train-text-tower: both towers are frozen, so it would change nothing")


@dataclasses.dataclass
class DataConfig(_Checked):
    captions_per_image: int = _field(3, "(image, caption) pairs per image and epoch, captions sampled without replacement",
                                     COUNT)
    val_fraction: float = _field(VAL_FRACTION, "fraction of images (never captions) held out for validation when "
                                                         "writing shards", FRACTION)
    split_seed: int = _field(SPLIT_SEED, "seed of that train/val split by image (python -m dual_encoder.data --seed "
                                                   "has the same default, so both tools write the same split)", SEED)
    images_per_shard: int = _field(IMAGES_PER_SHARD, "images per TFRecord shard when writing shards", COUNT)
    max_side: Optional[int] = _field(None, "re-encode images whose longer side exceeds N pixels when writing shards", COUNT)
    shuffle_buffer: int = _field(10_000, "pairs in the shuffle buffer", COUNT)
    cache: bool = _field(False, "keep parsed shards in memory after the first epoch")
    feature_cache: bool = _field(True, "with both towers frozen, compute their features once, store them next to the shards and "
                                       "train the heads on them (--no-feature-cache: recompute every epoch)")
    skip_damaged_shards: bool = _field(False, "train on the intact shards when some fail their record checksums (otherwise a "
                                              "damaged shard stops the run, naming it and how to rewrite it)")
    mask_duplicate_captions: bool = _field(True, "a caption written word for word (case, spaces and trailing punctuation "
                                                 "aside) on two images makes each image a right answer for it: such pairs "
                                                 "are not negatives of each other, as two captions of one image are not "
                                                 "(--no-mask-duplicate-captions: only the same image is masked)")
    augment_views: int = _field(0, "with the feature cache, also compute N random-resized-crop / flip views of each training "
                                   "image once; each epoch trains on one of them (or the plain image) per image, so frozen "
                                   "towers still see augmentation (0: the plain features only)", Bounds(0, 64))
    augment_min_scale: float = _field(0.5, "smallest share of the image's area an augmented view crops (--augment-views)",
                                      Bounds(0, 1, low_open=True, integer=False))


@dataclasses.dataclass
class TrainConfig(_Checked):
    batch_size: int = _field(256, "global batch size (pairs); every other pair in the batch is a negative "
                                  "(so at least 2)", Bounds(2))
    epochs: int = _field(8, "maximum number of epochs", COUNT)
    learning_rate: float = _field(1e-3, "AdamW learning rate (an AdamW step moves each weight by about this much; 0 trains "
                                        "nothing, e.g. to export a --init checkpoint as it is)", Bounds(0, 1))
    weight_decay: float = _field(1e-3, "AdamW weight decay (never applied to the temperature, biases or norms)",
                                  Bounds(0, math.inf, high_open=True))
    early_stopping_patience: int = _field(5, "stop after N epochs without val_loss improvement (best weights restored)", PATIENCE)
    reduce_lr_patience: int = _field(3, "multiply the learning rate by --reduce-lr-factor after N epochs without val_loss "
                                        "improvement", PATIENCE)
    reduce_lr_factor: float = _field(0.2, "factor applied by ReduceLROnPlateau",
                                     Bounds(0, 1, low_open=True, high_open=True))
    seed: int = _field(42, "random seed (weights, shuffling, caption sampling; the data split has --split-seed)", SEED)
    strategy: str = _field("default", "tf.distribute strategy: default (one device), mirrored (all GPUs here), multiworker "
                                      "(TF_CONFIG)", choices=("default", "mirrored", "multiworker"))
    mixed_precision: Optional[str] = _field(None, "Keras dtype policy for GPUs, e.g. mixed_float16 or mixed_bfloat16 (slower on "
                                                  "CPU)", choices=DTYPE_POLICIES)
    jit_compile: bool = _field(False, "compile the train step with XLA (good for text towers and GPUs; slow for Xception on CPU)")
    deterministic: bool = _field(False, "the same seed gives the same batches and the same weights, run after run "
                                        "(TensorFlow's op determinism, for the whole process: the input pipeline keeps "
                                        "its order, GPU kernels their summation order; somewhat slower)")

    def _check_together(self) -> None:
        if self.learning_rate * self.weight_decay >= MAX_LR_TIMES_DECAY:
            raise InvalidArgumentError(
                f"--weight-decay {self.weight_decay:g} with --learning-rate {self.learning_rate:g}: AdamW removes "
                f"learning rate x weight decay of every weight each step, so their product must be below "
                f"{MAX_LR_TIMES_DECAY:g} (--weight-decay in [0, {MAX_LR_TIMES_DECAY / self.learning_rate:g}) here)")


@dataclasses.dataclass
class FinetuneConfig(_Checked):
    """Starting from a pretrained CLIP / SigLIP (`--init`), its learning-rate schedule, WiSE-FT,
    and GradCache for large contrastive batches on small memory."""

    init: Optional[str] = _field(None, "start from a keras-hub CLIP or SigLIP preset (a name, downloaded when online, or a local "
                                       "preset folder): its vision and text encoders become the towers, its projections the "
                                       "heads, its logit scale (and SigLIP's bias), image converter, tokenizer and sequence "
                                       "length are kept, so the untrained model is the checkpoint. Without --preset it trains "
                                       "the `finetune` recipe: both towers, AdamW lr 1e-5, weight decay 0.1 on matrices only, "
                                       "10 %% warmup then cosine decay, batch 128, 5 epochs", metavar="NAME_OR_DIR")
    lr_schedule: str = _field("constant", "learning-rate schedule: constant (ReduceLROnPlateau lowers it), or cosine (linear "
                                          "warmup over --warmup-fraction of all steps, then cosine decay to 0; no "
                                          "ReduceLROnPlateau)", choices=("constant", "cosine"))
    warmup_fraction: float = _field(0.0, "with --lr-schedule cosine: the share of all training steps spent warming the learning "
                                         "rate up from 0", FRACTION)
    wise_ft: Optional[float] = _field(None, "WiSE-FT: export (1 - ALPHA) * pretrained + ALPHA * fine-tuned of every tower and "
                                            "head weight (1: the fine-tuned model, 0: the --init checkpoint exactly); "
                                            "checkpoints and model.keras keep the fine-tuned weights. Needs --init",
                                      Bounds(0, 1, integer=False), metavar="ALPHA")
    grad_cache_chunk: Optional[int] = _field(None, "GradCache: run the towers N pairs at a time and take the loss on the whole "
                                                   "batch's embeddings (same gradients, memory of N pairs); needs --dropout 0 "
                                                   "and --feature-dropout 0 for identical results", COUNT, metavar="N")

    def _check_together(self) -> None:
        if self.wise_ft is not None and self.init is None:
            raise InvalidArgumentError(f"--wise-ft {self.wise_ft:g} mixes the fine-tuned weights with the pretrained ones: it "
                                       "needs --init PRESET (the checkpoint the run starts from)")
        if self.warmup_fraction and self.lr_schedule == "constant":
            raise InvalidArgumentError(f"--warmup-fraction {self.warmup_fraction:g} needs --lr-schedule cosine")


@dataclasses.dataclass
class RunConfig:
    """A whole run: one section per stage. Each section checks its fields when they are set;
    `validate()` checks everything again plus the rules between fields (train() calls it)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    preset: str = "reference"
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)

    def __setattr__(self, name: str, value) -> None:
        expected = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "preset": str,
                    "finetune": FinetuneConfig}.get(name)
        if expected is not None and not isinstance(value, expected):
            raise InvalidArgumentError(f"RunConfig.{name} must be a {expected.__name__}, got {type(value).__name__} "
                                       f"{value!r:.80}; start from dual_encoder.get_preset(...) and set its fields")
        object.__setattr__(self, name, value)

    def validate(self) -> "RunConfig":
        """Every field of every section, and the rules between fields; returns self (InvalidArgumentError otherwise)."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name))  # the section types
        for section in (self.model, self.data, self.train, self.finetune):
            section.validate()
        self._check_sections()
        return self

    def _check_sections(self) -> None:
        """Rules between sections: --init with the model section, GradCache with XLA."""
        if self.finetune.grad_cache_chunk and self.train.jit_compile:
            raise InvalidArgumentError(f"--grad-cache-chunk {self.finetune.grad_cache_chunk} runs a loop over chunks whose "
                                       "shapes XLA cannot compile: drop --jit-compile")
        if self.finetune.init is None:
            if self.preset == "finetune":
                raise InvalidArgumentError("the finetune preset starts from a checkpoint: pass --init PRESET (a keras-hub "
                                           "CLIP or SigLIP preset name or folder)")
            return
        if self.model.class_prior:
            raise InvalidArgumentError("--class-prior needs an image tower with its ImageNet classifier; with --init the "
                                       "towers are the checkpoint's: pass --no-class-prior")
        if self.model.image_size is not None:
            raise InvalidArgumentError(f"--image-size {self.model.image_size}: with --init the image size is the "
                                       "checkpoint's own (its position embeddings are fixed); leave --image-size out")

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        """The config `to_dict()` wrote (e.g. a run's config.json); keys this version does not know are left out."""
        sections = {name: kind for name, kind in SECTIONS.items() if isinstance(values.get(name), dict)}
        made = {name: kind(**{k: v for k, v in values[name].items() if k in kind.__dataclass_fields__})
                for name, kind in sections.items()}
        return cls(**made, preset=str(values.get("preset", "reference")))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "finetune": FinetuneConfig}


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


def lit() -> RunConfig:
    """Both pretrained towers locked (LiT), linear heads trained on thousands to millions of pairs:
    `lit-small`'s towers (EfficientNet-Lite0 + all-MiniLM-L6-v2 from ../shared/weights, any others
    by --image-encoder / --text-encoder), its class prior, linear heads into 256-d, with the
    optimisation of a larger set: fixed logit scale 16, batch 512 (more negatives per step), AdamW
    lr 3e-3 (wd 1e-3), dropout 0.3 on the tower features entering the heads (`--feature-dropout`),
    at most 25 epochs, ReduceLROnPlateau (patience 2) and early stopping (patience 5) on the
    validation loss, best weights kept; all 5 captions per image; a caption written word for word
    on two images is not a negative of either (data/caption_keys.py); 5 % of the photos held out
    for validation when train.py writes the shards (--val-fraction), not 20 %.

    python train.py --preset lit --csv ../shared/data/flickr8k/captions.txt --image-column image \
        --caption-column caption --image-template 'Images/{}' --output-dir runs/lit-flickr8k

    Images are resized as the image tower's converter says, the same way in training, evaluation
    and the SavedModel: EfficientNet-Lite0 scales the short side to 224 and centre-crops, so square
    photos (Flickr8k's, squashed to 224 x 224 upstream) are only scaled and non-square ones lose
    the ends of their long side.

    Chosen on the validation split of the training data only (914 of 6,091 Flickr8k photos; the
    1,000 held-out photos were scored once, at the end). text->image R@1 / R@5 / R@10 on it:
    lit-small's recipe (lr 1e-2, batch 128) 18.9 / 46.6 / 60.5, stopping after 4 epochs with the
    validation loss rising from epoch 2; lr 1e-3 batch 128 20.9 / 48.4 / 61.8; lr 3e-3 batch 512
    21.1 / 48.9 / 62.2 (kept); lr 1e-3 batch 512 with weight decay 0.1 21.1 / 48.2 / 61.7; a learned
    temperature 20.9 / 48.0 / 61.9; the MLP head 18.0 / 43.9 / 57.6; linear warmup (5 %) + cosine
    decay instead of ReduceLROnPlateau 21.2 / 48.9 / 62.2 (at lr 6e-3: 21.0 / 49.6 / 63.0), a tie
    that needs an epoch count chosen in advance, so the plateau schedule stays; masking duplicate
    captions 21.1 / 48.9 / 62.1 against 21.1 / 48.9 / 62.2 (462 of 35,455 captions repeat).
    Augmented views in the feature cache (`--augment-views 4`: four random-resized crops of 50-100 %
    of the area, mirrored half the time, one of them or the plain photo per image and epoch) tied
    on another validation split (1,218 photos, benchmarks/quality.py's): 19.2 / 44.8 / 58.2 against
    18.9 / 45.1 / 58.0 without, for 212 s more extraction, so `lit` leaves them off: with both
    towers locked and linear heads, 28,000 pairs do not overfit the way augmentation cures.
    Yet the heads do overfit: by epoch 7 the training batches' text->image accuracy is 0.76 against
    0.51 on the validation batches. Dropout on the features entering the heads (the class prior's path
    left whole) narrows the gap and generalises better, on benchmarks/quality.py's validation split (1,218 photos): 18.9 / 45.1
    / 58.0 without, 20.3 / 46.8 / 59.5 with 0.3 (image->text 21.7 / 49.3 / 62.6 -> 24.4 / 50.7 /
    62.9), 20.4 / 46.7 / 59.6 when stopped at 15 epochs instead of 31 (kept). Rates 0.2 / 0.3 / 0.4 /
    0.5 gave 19.7 / 19.9 / 19.2 / 19.5 R@1 in a quicker loop (constant lr; 0.3 beat no dropout by
    0.9 to 1.2 points of R@1 on each of seeds 0-2).
    Unlocking the top text layer (MiniLM's last block trained at lr 1e-4 on cached layer-5 hidden
    states, the heads as above, no feature dropout) reached 20.0 / 45.4 / 58.2 at its best epoch
    against 18.9 / 45.1 / 58.0, at 57 s per epoch instead of 4: not worth its cost, so not built.
    Mid-level features (`--image-feature-stages 4 --text-feature-layers 1`, kept): EfficientNet's
    pooled stage outputs 4c / 5c / 6d / 7a beside its top features and MiniLM's mean-pooled 5th
    block beside its sentence embedding, cached like the top: 22.5-22.6 / 49.0-49.5 / 61.5-62.0
    against 19.8-20.1 / 45.6-45.7 / 58.4-58.9 in the quick loop (seeds 0-2, feature dropout 0.3);
    all 6 stages without the text layer 21.6 / 48.4 / 61.7. Left out there: a kNN caption prior
    (+0.1 R@1), 4 ensembled heads (+0.4), max pooling (0), per-dimension standardising and 2 x 2
    grid pooling (worse).
    Then, in the same quick loop (seeds 0-2): at most 25 epochs and logit scale 16 instead of 15
    and 12, 22.6-23.0 / 50.2-50.9 / 62.6-63.1 against 22.4-22.6 / 50.0-50.7 / 62.3-62.9 (kept); a
    second MiniLM block (4th) on top of that 22.7-23.0 (a tie, for 150 s more extraction); scale 20
    (seed 0) 22.3. The heads are data-hungry: trained on 87.5 % of the training photos (three random
    subsets) they lost 0.6 R@1 (21.4-22.3), on 75 % 2.2, while early stopping and the plateau
    schedule watching 305 validation photos instead of 1,218 cost 0.1 (22.5-22.8): hence 5 %
    validation, which trains on 19 % more photos than 20 % does.
    Held out (1,000 photos, benchmarks/quality.py --suite flickr8k, seeds 0-2): 25.9 / 55.9 / 68.7
    text->image, 32.9 / 61.7 / 74.2 image->text (median ranks 4 / 3); before scale 16, 25 epochs
    and 5 % validation 23.9 / 53.9 / 67.3, before mid-level features 22.1 / 50.9 / 64.0, before
    feature dropout 21.0 / 48.7 / 62.0; lit-small's recipe (seed 0) 20.5 / 48.4 / 61.3;
    animals10_proxy zero-shot 78.8 % (lit-small's recipe on this data 66.7 %).
    """
    config = lit_small()
    config.model.feature_dropout = 0.3
    config.model.image_feature_stages = 4
    config.model.text_feature_layers = 1
    config.model.logit_scale = math.log(16.0)
    config.data.val_fraction = 0.05
    config.train = TrainConfig(batch_size=512, epochs=25, learning_rate=3e-3, weight_decay=1e-3, early_stopping_patience=5,
                               reduce_lr_patience=2)
    config.preset = "lit"
    return config


def finetune(init: Optional[str] = None) -> RunConfig:
    """Fine-tuning a pretrained CLIP / SigLIP on your own pairs (the default with --init): both
    towers train (as open_clip's and the WiSE-FT paper's end-to-end fine-tuning), AdamW at lr 1e-5
    with weight decay 0.1 on matrices only, linear warmup over the first 10 % of the steps then
    cosine decay to 0, batch 128, 5 epochs with early stopping on the validation loss (patience 2,
    best weights kept); the loss is the checkpoint's own.

    python train.py --init clip_vit_base_patch16 --tfrecords tfrecords/mine --output-dir runs/clip-mine
    python evaluate.py wise-ft --run runs/clip-mine --alphas 0 0.25 0.5 0.75 1 --reference-dataset animals10 \
        --reference-dir DIR      # then: the same train.py command with --wise-ft ALPHA re-exports the chosen mix

    Why: pretrained encoders are already near a good solution and a step of 1e-3 (the head-only
    recipes' rate) throws it away; 1e-5 (open_clip's fine-tuning examples, FLYP; WiSE-FT's 3e-5)
    adapts them without forgetting. Warmup keeps the first steps, whose Adam moments are still
    estimates, from jolting the towers; cosine decay ends at 0. Decay 0.1 is half CLIP's 0.2 for
    short runs and never touches gains, biases or the temperature; Adam runs with CLIP's beta_2
    0.98 and epsilon 1e-6 (training/optimizer.py). Deterministic (op determinism), so a rerun,
    a GradCache run and a WiSE-FT re-export reproduce the same weights.
    Measured on a stand-in (a random 2-layer CLIP, width 64, 32 px, trained at 1e-3 on 3,000
    generated sample pictures, then fine-tuned 5 epochs, batch 64, on 1,200 pictures of triangles only):
    text->image / image->text R@5 on held-out triangles and on 400 pictures of the other shapes,
    pretrained 49.7 / 51.5 and 80.1 / 64.7 %; lr 1e-3 constant 50.4 / 50.5 and 62.3 / 50.6
    (18 points of the other shapes forgotten); lr 1e-4 cosine 50.3 / 54.8 and 76.6 / 64.1; this
    recipe (1e-5) 50.2 / 55.9 and 79.1 / 63.7 (the domain gain, within a point of the reference).
    WiSE-FT alpha 0.5 of the 1e-3 run: 49.6 / 54.5 and 73.0 / 61.9 (11 of the 18 points back).
    """
    return RunConfig(
        model=ModelConfig(train_image_tower=True, train_text_tower=True, head="linear", dropout=0.0, loss=None),
        train=TrainConfig(batch_size=128, epochs=5, learning_rate=1e-5, weight_decay=0.1, early_stopping_patience=2,
                          reduce_lr_patience=2, deterministic=True),
        finetune=FinetuneConfig(init=init, lr_schedule="cosine", warmup_fraction=0.1),
        preset="finetune",
    )


PRESETS = {"reference": reference, "sample": sample, "lit-small": lit_small, "lit": lit}
# The recipe train.py --init starts from. It is a preset like the others (--preset finetune) but
# kept apart from PRESETS, whose values --help lists flag by flag (the --init help names its own).
INIT_PRESETS = {"finetune": finetune}


def get_preset(name: str) -> RunConfig:
    try:
        return {**PRESETS, **INIT_PRESETS}[name]()
    except KeyError:
        raise InvalidArgumentError(f"unknown preset {name!r}; choose one of {sorted({**PRESETS, **INIT_PRESETS})}") from None

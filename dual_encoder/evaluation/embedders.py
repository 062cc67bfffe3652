"""What evaluation talks to: anything that turns images and texts into L2-normalised embeddings.

Two implementations share one batching path (`BatchedEmbedder`): `SavedModelEmbedder` for our
own exported models (a training output folder with `saved_model/` inside, or the SavedModel
directory itself) and `KerasHubClipEmbedder` for pretrained keras-hub CLIP/SigLIP presets, the
reference numbers a trained model is compared against. `load_embedder` picks one from a path or
preset name.

Preprocessing: images come in all sizes, but a batch needs one size, so every image is first
brought to `side` x `side` by `ImagePrep` (squash, centre-crop or pad) and then handed to the
model, which applies its own resize and normalisation. The default follows each model: for our
SavedModels the tower's size and resize mode recorded by training (else `squash` at 224, the
training default) with the training pipeline's own resize, so the in-graph resize becomes a
no-op; for CLIP/SigLIP the preset image converter's size, crop/squash choice and interpolation,
done with Pillow (their published evaluation). `describe()` records the choice in every report.
Files are normalised exactly as the shard writer does (`data.images.to_rgb_jpeg`: EXIF
rotation, colour modes, alpha) and decoded with `tf.io.decode_jpeg` like the training
pipeline: Pillow's JPEG decoder differs from it by up to 20 levels per pixel.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from dual_encoder import config, files
from dual_encoder.data.images import MissingImageError, UndecodableImageError, read_bytes, to_rgb, to_rgb_jpeg
from dual_encoder.data.records import SkipCounter
from dual_encoder.errors import DualEncoderError, InvalidArgumentError, WrongTypeError
from dual_encoder.evaluation.retrieval import l2_normalize

SAVED_MODEL_FILE = "saved_model.pb"
TRAINING_OUTPUT_SUBDIR = "saved_model"
KERAS_HUB_CONFIG = "config.json"
TRAINING_RESULTS = "results.json"  # written by training next to saved_model/: tower size and resize mode
RESIZE_MODES = ("squash", "crop", "pad")
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}
_TF_RESIZES = {("squash", "bilinear"), ("crop", "bilinear")}  # what data.pipeline.resize_image does
_DECODE_THREADS = max(2, min(8, os.cpu_count() or 2))  # Pillow decodes outside the GIL


class EmbedderError(DualEncoderError, ValueError):
    """A model cannot be loaded; the message says what to pass instead."""


class Embedder(Protocol):
    """What evaluation needs from a model: L2-normalised embeddings and a description for reports."""

    def encode_images(self, images: Sequence) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def describe(self) -> dict: ...


@dataclasses.dataclass(frozen=True)
class ImagePrep:
    """How any image becomes `side` x `side` before batching.

    squash: resize to the square, ignoring aspect ratio; crop: resize the short side and take
    the centre; pad: fit the long side and pad with black (Pillow only). library "tensorflow"
    is the training pipeline's own `resize_image` (bilinear, antialiased), so our models see
    exactly the pixels they were trained on; "pillow" serves CLIP-style bicubic preprocessing.
    """

    side: int = 224
    mode: str = "squash"
    interpolation: str = "bilinear"
    library: str = "tensorflow"

    def __post_init__(self):
        config.IMAGE_SIDE.check(self.side, "the image side (--image-size)")
        if self.mode not in RESIZE_MODES:
            raise InvalidArgumentError(f"unknown resize mode {self.mode!r}; choose one of {RESIZE_MODES}")
        if self.library == "tensorflow" and (self.mode, self.interpolation) not in _TF_RESIZES:
            raise InvalidArgumentError(f"the training resize supports {sorted(_TF_RESIZES)}; use library='pillow' for others")
        if self.library == "pillow" and self.interpolation not in _PIL_FILTERS:
            raise InvalidArgumentError(f"unknown interpolation {self.interpolation!r}; choose one of {tuple(_PIL_FILTERS)}")

    def replace(self, side: Optional[int] = None, mode: Optional[str] = None) -> "ImagePrep":
        """A copy with another side and/or mode (switching to Pillow where TensorFlow has no such mode)."""
        mode = mode or self.mode
        library = self.library if (mode, self.interpolation) in _TF_RESIZES else "pillow"
        return dataclasses.replace(self, side=self.side if side is None else side, mode=mode, library=library)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (self.side, self.side):
            return image
        if self.library == "tensorflow":
            from dual_encoder.data.pipeline import resize_image

            return np.rint(resize_image(image, (self.side, self.side), self.mode).numpy()).astype(np.uint8)
        pil, size, method = Image.fromarray(image), (self.side, self.side), _PIL_FILTERS[self.interpolation]
        if self.mode == "crop":
            pil = ImageOps.fit(pil, size, method)
        elif self.mode == "pad":
            pil = ImageOps.pad(pil, size, method, color=(0, 0, 0))
        else:
            pil = pil.resize(size, method)
        return np.asarray(pil)

    def describe(self) -> dict:
        return {**dataclasses.asdict(self), "decode": "RGB JPEG as written to shards, tf.io.decode_jpeg"}


def load_rgb(source, name: str = "image") -> np.ndarray:
    """An HxWx3 uint8 array from a path, encoded bytes, a PIL image or an array (uint8, or float
    in [0, 1] as the SavedModel takes), decoded as training decodes.

    Raises `MissingImageError` / `UndecodableImageError` (counted as skips by callers), and
    ValueError for float pixels outside [0, 1] (0..255 floats would otherwise be guessed at).
    """
    import tensorflow as tf

    if isinstance(source, Image.Image):  # deep and float modes scaled from their white level, as the writer does
        source = np.asarray(to_rgb(source, name))
    if isinstance(source, np.ndarray) and source.dtype.kind == "f":
        if source.size and not (0.0 <= float(source.min()) and float(source.max()) <= 1.0):
            raise InvalidArgumentError(f"{name}: float pixels must be in [0, 1]; pass uint8 for 0..255 pixels")
        source = np.round(source * 255.0).astype(np.uint8)
    if isinstance(source, np.ndarray) and source.dtype == np.uint8 and source.ndim == 3 and source.shape[2] == 3:
        return source
    if isinstance(source, (str, os.PathLike)):
        name, source = str(source), read_bytes(str(source))
    jpeg, _, _ = to_rgb_jpeg(source, name=name)
    return tf.io.decode_jpeg(jpeg, channels=3).numpy()


def _text_list(texts) -> list[str]:
    """`texts` as a list of strings: one string is one text; anything else is named, not failed on deep in TensorFlow."""
    if isinstance(texts, str):
        return [texts]
    if texts is None or isinstance(texts, bytes) or not hasattr(texts, "__iter__"):
        raise WrongTypeError(f"texts must be a string or a list of strings, got {type(texts).__name__} {texts!r:.60}")
    texts = list(texts)
    wrong = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
    if wrong is not None:
        raise WrongTypeError(f"texts must all be strings; item {wrong} is {type(texts[wrong]).__name__} {texts[wrong]!r:.60}")
    return texts


class BatchedEmbedder:
    """Batching, progress bars and image preparation; subclasses embed one ready batch."""

    def __init__(self, prep: ImagePrep, batch_size: int = 32, progress: bool = True):
        self.prep = prep
        self.batch_size = config.COUNT.check(batch_size, "batch_size (--batch-size)")
        self.progress = progress
        self._embedding_dim: Optional[int] = None

    def _embed_image_batch(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies model + preprocessing for the embedding cache."""
        return json.dumps(self.describe(), sort_keys=True, default=str)

    def _bar(self, total: int, unit: str):
        return tqdm(total=total, unit=unit, desc=f"embedding {unit}s", disable=not self.progress, leave=False)

    @property
    def embedding_dim(self) -> int:
        """D, the width of every embedding: measured once on one short text, so it holds for any
        model behind the interface; empty inputs still give [0, D] arrays that stack with others."""
        if self._embedding_dim is None:
            self._embedding_dim = int(np.asarray(self._embed_text_batch(["a"])).shape[-1])
        return self._embedding_dim

    def _stacked(self, out: list) -> np.ndarray:
        return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings [N, D] of N texts (a single string counts as one text)."""
        texts, out = _text_list(texts), []
        with self._bar(len(texts), "caption") as bar:
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                out.append(l2_normalize(self._embed_text_batch(batch)))
                bar.update(len(batch))
        return self._stacked(out)

    def encode_images(self, images: Sequence) -> np.ndarray:
        """Embeddings of images (arrays, paths or bytes) that must all be readable."""
        return self.encode_image_sources(images, skipped=None)[0]

    def _prepared(self, source, name: str):
        """(image ready for the model, None) or (None, the read error)."""
        try:
            return self.prep(load_rgb(source, name)), None
        except (MissingImageError, UndecodableImageError) as error:
            return None, error

    def encode_image_sources(
        self, sources: Sequence, skipped: Optional[SkipCounter], names: Optional[Sequence[str]] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings of the readable images, bool mask of which were readable).

        Images are decoded one batch at a time, so memory stays flat for large sets; threads
        decode the next batch while the model runs on this one (Pillow releases the GIL). With
        `skipped=None` an unreadable image raises; otherwise it is counted and left out.
        """
        out, ok = [], np.zeros(len(sources), dtype=bool)
        batches = [range(s, min(s + self.batch_size, len(sources))) for s in range(0, len(sources), self.batch_size)]
        with self._bar(len(sources), "image") as bar, ThreadPoolExecutor(_DECODE_THREADS) as pool:

            def submit(rows):
                return [(i, pool.submit(self._prepared, sources[i], names[i] if names else f"image {i}")) for i in rows]

            pending = submit(batches[0]) if batches else []
            for number in range(len(batches)):
                current = pending
                pending = submit(batches[number + 1]) if number + 1 < len(batches) else []
                batch = []
                for i, future in current:
                    image, error = future.result()
                    if error is None:
                        batch.append(image)
                        ok[i] = True
                    elif skipped is None:
                        raise error
                    else:
                        skipped.skip(error.reason, str(error))  # missing_file, undecodable, not_a_file, ...
                if batch:
                    out.append(l2_normalize(self._embed_image_batch(np.stack(batch))))
                bar.update(len(current))
        return self._stacked(out), ok


def find_saved_model(path) -> Path:
    """The SavedModel directory inside a training output folder, or `path` itself."""
    path = Path(path)
    for candidate in (path, path / TRAINING_OUTPUT_SUBDIR):
        if (candidate / SAVED_MODEL_FILE).is_file():
            return candidate
    raise EmbedderError(
        f"{path} holds no SavedModel: expected {path}/{SAVED_MODEL_FILE} (an exported model) or "
        f"{path}/{TRAINING_OUTPUT_SUBDIR}/{SAVED_MODEL_FILE} (a training output folder), or a keras-hub "
        f"preset's {KERAS_HUB_CONFIG}"
    )


def training_image_prep(saved_model_dir: Path) -> Optional[ImagePrep]:
    """The image side and resize mode the model was trained with, from its run's results.json.

    Pre-resizing exactly as the model does makes its own in-graph resize a no-op, so mixed-size
    images batch together without changing what the model sees. None when there is no record
    (a bare exported SavedModel): then `squash` at 224, the training default, unless overridden.
    """
    try:
        spec = json.loads((saved_model_dir.parent / TRAINING_RESULTS).read_text())["towers"]["image"]
        return ImagePrep(side=int(max(spec["image_size"])), mode=spec.get("resize", "squash"))
    except (OSError, KeyError, ValueError, TypeError):
        return None


_REEXPORT = ("export it again from the run's model.keras: import keras, dual_encoder.model, dual_encoder.export; "
             "dual_encoder.export.export_saved_model(keras.models.load_model('RUN/model.keras'), 'RUN/saved_model')")


def _load_saved_model(path: Path):
    """tf.saved_model.load after checking the files against the checksums the export recorded;
    a damaged or unloadable export is an EmbedderError naming it and how to write it again."""
    import tensorflow as tf

    record = path / files.TREE_CHECKSUMS
    if record.is_file():
        try:
            changed = files.changed_files(path, json.loads(record.read_text()))
        except (OSError, ValueError, AttributeError):
            changed = [files.TREE_CHECKSUMS]
        if changed:
            raise EmbedderError(f"the SavedModel at {path} is damaged ({', '.join(changed[:3])} differ from the checksums "
                                f"written at export): {_REEXPORT}")
    try:
        return tf.saved_model.load(str(path))
    except (tf.errors.OpError, OSError, ValueError) as error:
        cause = str(getattr(error, "message", error)).splitlines()[0][:200]
        raise EmbedderError(f"the SavedModel at {path} cannot be loaded ({type(error).__name__}: {cause}): {_REEXPORT}") from None


class SavedModelEmbedder(BatchedEmbedder):
    """An exported dual encoder: endpoints `encode_image` (uint8, any size) and `encode_text`."""

    def __init__(self, path, prep: Optional[ImagePrep] = None, batch_size: int = 32, progress: bool = True):
        import tensorflow as tf

        try:  # registers the tokenizer ops a real export's text endpoint needs
            import tensorflow_text  # noqa: F401
        except ImportError:
            pass
        self._tf = tf
        self.path = find_saved_model(path)
        self.model = _load_saved_model(self.path)
        super().__init__(prep or training_image_prep(self.path) or self._recorded_prep(), batch_size, progress)
        missing = [name for name in ("encode_image", "encode_text") if not hasattr(self.model, name)]
        if missing:
            raise EmbedderError(f"the SavedModel at {self.path} lacks the endpoint(s) {missing}")

    def _recorded_prep(self) -> ImagePrep:
        """The resize the export recorded (image_size, resize_mode); `squash` at 224 for older exports."""
        size, mode = getattr(self.model, "image_size", None), getattr(self.model, "resize_mode", None)
        if not size or not mode:
            return ImagePrep(224, "squash")
        return ImagePrep(side=int(max(size[0].numpy())), mode=mode[0].numpy().decode())

    def _embed_image_batch(self, batch):
        return self.model.encode_image(self._tf.constant(batch, self._tf.uint8)).numpy()

    def _embed_text_batch(self, texts):
        return self.model.encode_text(self._tf.constant(texts, self._tf.string)).numpy()

    @property
    def logit_scale(self) -> Optional[float]:
        """exp(log scale), from a variable or a one-variable collection; None if absent."""
        value = getattr(self.model, "logit_scale", None)
        if value is not None and not hasattr(value, "numpy"):  # a variable collection
            value = next(iter(value), None)
        return None if value is None else float(np.exp(np.asarray(value.numpy()).reshape(-1)[0]))

    def describe(self) -> dict:
        stat = (self.path / SAVED_MODEL_FILE).stat()
        return {
            "type": "savedmodel",
            "path": str(self.path.resolve()),
            "saved_model_mtime_ns": stat.st_mtime_ns,
            "saved_model_size": stat.st_size,
            "logit_scale": self.logit_scale,
            "preprocessing": self.prep.describe(),
        }


def _offline_error(preset: str, error: Exception) -> EmbedderError:
    return EmbedderError(
        f"cannot load keras-hub preset {preset!r} ({type(error).__name__}: {str(error)[:200]}). "
        "Preset weights download only when online. Offline, pass --model a local preset directory "
        "(saved with backbone.save_to_preset() and preprocessor.save_to_preset()), a training "
        "output folder, or an exported SavedModel."
    )


def _converter_prep(converter) -> ImagePrep:
    """The preset's own choice (CLIP crops, SigLIP squashes), done once with Pillow before batching."""
    config = converter.get_config()
    mode = "crop" if config.get("crop_to_aspect_ratio") else "pad" if config.get("pad_to_aspect_ratio") else "squash"
    interpolation = config.get("interpolation", "bicubic")
    return ImagePrep(int(max(converter.image_size)), mode, interpolation if interpolation in _PIL_FILTERS else "bicubic",
                     "pillow")


class KerasHubClipEmbedder(BatchedEmbedder):
    """A pretrained keras-hub CLIP or SigLIP, by preset name/handle or local preset directory."""

    def __init__(self, preset: str, batch_size: int = 32, progress: bool = True, prep: Optional[ImagePrep] = None):
        import keras_hub

        from dual_encoder.towers.clip import FAMILIES  # backbone class -> its preprocessor (imports keras-hub: here only)

        self.preset = str(preset)
        try:
            self.backbone = keras_hub.models.Backbone.from_preset(self.preset)
        except Exception as error:  # network, missing files, bad handles: all mean "cannot load"
            raise _offline_error(self.preset, error) from error
        kind = type(self.backbone).__name__
        if kind not in FAMILIES:
            raise EmbedderError(f"{self.preset} is a {kind}; only {sorted(FAMILIES)} can embed both images and "
                                f"texts")
        preprocessor_cls = getattr(keras_hub.models, FAMILIES[kind].preprocessor)
        # Text and images are preprocessed separately: one text-only preprocessor, one converter.
        self.text_preprocessor = preprocessor_cls.from_preset(self.preset, image_converter=None)
        self.image_converter = preprocessor_cls.image_converter_cls.from_preset(self.preset)
        super().__init__(prep or _converter_prep(self.image_converter), batch_size, progress)

    def _embed_image_batch(self, batch):
        pixels = self.image_converter(batch.astype("float32"))
        return np.asarray(self.backbone.get_vision_embeddings(pixels))

    def _embed_text_batch(self, texts):
        token_ids = self.text_preprocessor({"prompts": list(texts), "images": None})["token_ids"]
        return np.asarray(self.backbone.get_text_embeddings(token_ids))

    def describe(self) -> dict:
        local = Path(self.preset) / KERAS_HUB_CONFIG
        return {
            "type": "keras_hub",
            "preset": str(Path(self.preset).resolve()) if local.is_file() else self.preset,
            "backbone": type(self.backbone).__name__,
            "config_sha1": files.json_digest(self.backbone.get_config(), "sha1"),
            "sequence_length": int(self.text_preprocessor.sequence_length),
            "image_converter": {k: v for k, v in self.image_converter.get_config().items() if k not in ("name", "dtype",
                                                                                                        "trainable")},
            "preprocessing": self.prep.describe(),
        }


def _is_keras_hub_preset(path: Path) -> bool:
    """A keras-hub preset's config.json names a registered class (a training run's does not)."""
    try:
        return "registered_name" in json.loads((path / KERAS_HUB_CONFIG).read_text())
    except (OSError, ValueError):
        return False


def known_presets() -> list[str]:
    import keras_hub

    return sorted(set(keras_hub.models.CLIPBackbone.presets) | set(keras_hub.models.SigLIPBackbone.presets))


def load_embedder(spec: str, batch_size: int = 32, progress: bool = True, prep: Optional[ImagePrep] = None):
    """A SavedModel/training-output folder, a local keras-hub preset dir, or a preset name/handle."""
    path = Path(spec)
    if path.is_dir():
        has_saved_model = any((p / SAVED_MODEL_FILE).is_file() for p in (path, path / TRAINING_OUTPUT_SUBDIR))
        if not has_saved_model and _is_keras_hub_preset(path):
            return KerasHubClipEmbedder(spec, batch_size, progress, prep)
        return SavedModelEmbedder(path, prep, batch_size, progress)
    if "://" in spec or spec in known_presets():
        return KerasHubClipEmbedder(spec, batch_size, progress, prep)
    raise EmbedderError(
        f"--model {spec!r} is neither a folder nor a known keras-hub preset. Pass a training output "
        f"folder (with {TRAINING_OUTPUT_SUBDIR}/ inside), an exported SavedModel, a local preset "
        f"directory, or one of: {', '.join(known_presets())}"
    )

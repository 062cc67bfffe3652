"""Test doubles and tiny data for the tests and benchmarks: nothing here touches the network.

- an informative stand-in model: `build_colour_saved_model` writes a SavedModel with the exported
  endpoints (`encode_image`, `encode_text`, `logit_scale`) whose embeddings really align (an image
  embeds as its mean colour, a text as the sum of the colours it names), so zero-shot and
  Recall@K must come out far above chance without a trained network;
- tiny keras-hub CLIP and SigLIP presets saved as local preset folders;
- small images and shard helpers (`pattern`, `encode`, `write_shard`, `read_split`, ...) and a
  tiny run configuration (`tiny_config`).

Uses any stage of the package but the command-line layer.
"""

from __future__ import annotations

import io
import os
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from dual_encoder import config as run_config
from dual_encoder.data import schema
from dual_encoder.data.tfrecords import list_shards

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # real photos and towers beside the repository (tests marked `shared`)


# --- the colour model and tiny keras-hub presets ---------------------------------------

# Corners of the RGB cube: after centring at grey their directions are all distinct.
COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
VOCAB_BUCKETS = 4096
EMBED_DIM = 32


class ColourModel(tf.Module):
    def __init__(self, projection: np.ndarray, word_table: np.ndarray):
        super().__init__()
        self.projection = tf.Variable(projection, dtype=tf.float32, trainable=False)
        self.word_table = tf.Variable(word_table, dtype=tf.float32, trainable=False)
        self.logit_scale = tf.Variable(np.log(1 / 0.07), dtype=tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def encode_image(self, images):
        pixels = tf.image.resize(tf.cast(images, tf.float32), (16, 16), antialias=True)
        rgb = tf.reduce_mean(pixels, axis=[1, 2]) / 255.0 - 0.5
        return tf.math.l2_normalize(rgb @ self.projection, axis=-1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode_text(self, texts):
        clean = tf.strings.regex_replace(tf.strings.lower(texts), "[^a-z ]", " ")
        buckets = tf.strings.to_hash_bucket_fast(tf.strings.split(clean), VOCAB_BUCKETS)
        summed = tf.reduce_sum(tf.gather(self.word_table, buckets), axis=1)
        return tf.math.l2_normalize(summed @ self.projection, axis=-1)


def build_colour_saved_model(path, seed: int = 0) -> Path:
    """Writes the colour model to `path` (a SavedModel directory) and returns it."""
    rng = np.random.default_rng(seed)
    projection = np.linalg.qr(rng.normal(size=(EMBED_DIM, 3)))[0].T  # orthonormal rows keep cosines
    word_table = rng.normal(0, 0.02, size=(VOCAB_BUCKETS, 3))  # other words: small random noise
    buckets = tf.strings.to_hash_bucket_fast(list(COLOURS), VOCAB_BUCKETS).numpy()
    assert len(set(buckets.tolist())) == len(COLOURS), "colour words collide in the hash"
    for bucket, rgb in zip(buckets, COLOURS.values()):
        word_table[bucket] = np.asarray(rgb) / 255.0 - 0.5
    tf.saved_model.save(ColourModel(projection, word_table), str(path))
    return Path(path)


def colour_image(colour: str, rng: np.random.Generator, size=(48, 64)) -> np.ndarray:
    """A grey picture with a noisy blob of `colour` and a small random-coloured distractor."""
    height, width = size
    image = np.full((height, width, 3), 128.0) + rng.normal(0, 20, size=(height, width, 3))
    y, x = rng.integers(0, height // 3), rng.integers(0, width // 3)
    image[y : y + height // 2 + 4, x : x + width // 2 + 4] = COLOURS[colour]
    image[:6, :6] = rng.integers(0, 256, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_colour_folders(root, colours, per_class: int, seed: int = 0, suffix: str = ".png", side=None) -> Path:
    """A class-per-folder set: root/<colour>/<i>.png, images of varying sizes (all `side` x `side` if given)."""
    rng = np.random.default_rng(seed)
    for colour in colours:
        (Path(root) / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(32, 80)), int(rng.integers(32, 80)))
            size = (side, side) if side else size
            Image.fromarray(colour_image(colour, rng, size)).save(Path(root) / colour / f"{i}{suffix}")
    return Path(root)


def export_tiny_dual_encoder(run_dir, captions):
    """A random tiny DualEncoder (WordPiece vocabulary from `captions`, tokenized in the graph with
    tensorflow-text ops) exported to RUN_DIR/saved_model, as a training run would; returns the model."""
    from dual_encoder import towers
    from dual_encoder.export import export_saved_model
    from dual_encoder.model import DualEncoder

    image = towers.build_image_tower("tiny", weights=None, image_size=48)
    text = towers.build_text_tower("tiny", pretrained=False, sequence_length=12,
                                   vocabulary=towers.build_vocabulary(list(captions) * 20, size=60))  # fmt: skip
    model = DualEncoder(image.model, text.model, text.preprocessor, image_size=image.image_size,
                        resize=image.resize, projection_dim=16)  # fmt: skip
    export_saved_model(model, str(Path(run_dir) / "saved_model"))
    return model


def build_tiny_clip_preset(path, num_layers: int = 1) -> Path:
    """A randomly initialised 1-layer keras-hub CLIP with a character-level BPE vocabulary."""
    import keras_hub

    chars = list(string.ascii_lowercase + string.digits + ".,")
    # End token last, as in real CLIP: its text pooler reads the position of the highest token id.
    tokens = chars + [c + "</w>" for c in chars] + ["th", "the</w>", "<|startoftext|>", "<|endoftext|>"]
    vocabulary = {token: i for i, token in enumerate(tokens)}
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=["t h", "th e</w>"])
    converter = keras_hub.layers.CLIPImageConverter(
        image_size=(32, 32), scale=1 / 255.0, crop_to_aspect_ratio=True, interpolation="bicubic"
    )
    preprocessor = keras_hub.models.CLIPPreprocessor(tokenizer, converter, sequence_length=16)
    layer = dict(hidden_dim=16, num_layers=num_layers, num_heads=2, intermediate_dim=32)
    backbone = keras_hub.models.CLIPBackbone(
        vision_encoder=keras_hub.models.CLIPVisionEncoder(patch_size=8, image_shape=(32, 32, 3), **layer),
        text_encoder=keras_hub.models.CLIPTextEncoder(
            vocabulary_size=len(vocabulary), embedding_dim=16, max_sequence_length=16, **layer
        ),
        projection_dim=8,
    )
    backbone.save_to_preset(str(path))
    preprocessor.save_to_preset(str(path))
    return Path(path)


def build_tiny_siglip_preset(path, num_layers: int = 1, logit_scale=None, logit_bias=None) -> Path:
    """A randomly initialised 1-layer keras-hub SigLIP with a 12-word SentencePiece vocabulary
    (`logit_scale` / `logit_bias`: its head's values instead of keras-hub's initial 0 and 0)."""
    import io

    import keras_hub
    import sentencepiece

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a photo of a cat", "a photo of a dog", "two blue circles at the top"] * 10),
        model_writer=proto, vocab_size=12, model_type="word", pad_id=-1, unk_id=0, bos_id=-1, eos_id=1,
        unk_piece="<unk>", eos_piece="</s>", minloglevel=2,
    )  # fmt: skip
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=proto.getvalue())
    converter = keras_hub.layers.SigLIPImageConverter(
        image_size=(32, 32), scale=1 / 127.5, offset=-1.0, crop_to_aspect_ratio=False, interpolation="bicubic"
    )
    preprocessor = keras_hub.models.SigLIPPreprocessor(tokenizer, converter, sequence_length=16)
    layer = dict(hidden_dim=16, num_layers=num_layers, num_heads=2, intermediate_dim=32)
    backbone = keras_hub.models.SigLIPBackbone(
        vision_encoder=keras_hub.models.SigLIPVisionEncoder(patch_size=8, image_shape=(32, 32, 3), **layer),
        text_encoder=keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=tokenizer.vocabulary_size(), embedding_dim=16, max_sequence_length=16, **layer
        ),
    )
    head = backbone.get_layer("siglip_head")
    for weight, value in ((head.logit_scale, logit_scale), (head.logit_bias, logit_bias)):
        if value is not None:
            weight.assign(value)
    backbone.save_to_preset(str(path))
    preprocessor.save_to_preset(str(path))
    return Path(path)


def write_sample_shards_with_the_data_cli(out, images: int = 96, seed: int = 0) -> Path:
    """Shards of the generated sample written by `python -m dual_encoder.data` in a fresh process (80 / 20 split)."""
    done = run_cli("--sample", "--sample-images", str(images), "--seed", str(seed), "--out", str(out), "--quiet")
    if done.returncode != 0:
        raise RuntimeError(f"python -m dual_encoder.data failed: {done.stderr[-2000:]}")
    return Path(out)


def read_h5_weights(path) -> dict:
    """Every dataset of a Keras .weights.h5 file by its path inside the file, as numpy arrays."""
    import h5py

    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: found.__setitem__(name, np.array(item)) if isinstance(item, h5py.Dataset) else None)
    return found


_BUILT: dict = {}


def shared_colour_model(tmp_path_factory) -> Path:
    """One colour SavedModel per test session, inside a training-output-like folder."""
    if "colour" not in _BUILT:
        run = tmp_path_factory.mktemp("colour_run")
        build_colour_saved_model(run / "saved_model")
        _BUILT["colour"] = run
    return _BUILT["colour"]


# --- images, shards, configurations -------------------------------------------------------




def pattern(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colour image (JPEG keeps it within a few levels), different per seed."""
    y, x = np.mgrid[0:height, 0:width]
    phase = seed * 0.7
    rgb = [127 + 100 * np.sin(x / width * 3 + phase + c) * np.cos(y / height * 2 + c) for c in range(3)]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def encode(image, fmt: str = "JPEG", **kwargs) -> bytes:
    """Bytes of `image` (an array or a PIL image) in `fmt`."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def rotated_jpeg() -> bytes:
    """64 wide x 32 high, left half red, right half blue, EXIF orientation 6 (display rotated 90 deg clockwise).

    Shown upright it is 32 wide x 64 high with red on top.
    """
    array = np.zeros((32, 64, 3), np.uint8)
    array[:, :32] = (255, 0, 0)
    array[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(array, exif=exif)


def close(a: np.ndarray, b: np.ndarray, tolerance: float = 12) -> bool:
    """Same shape and a mean absolute difference one JPEG generation at quality >= 90 stays under."""
    return a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < tolerance


def decode(jpeg: bytes) -> np.ndarray:
    """Decodes as the training pipeline will."""
    return tf.io.decode_jpeg(jpeg, channels=3).numpy()


def read_split(dirs, split: str) -> list[dict]:
    """Every example of `split`, parsed into plain Python values."""
    examples = []
    for path in list_shards(dirs, split):
        for serialized in tf.data.TFRecordDataset(path):
            parsed = schema.parse_example(serialized)
            examples.append(
                {
                    "id": parsed[schema.IMAGE_ID].numpy().decode(),
                    "captions": [c.decode() for c in parsed[schema.CAPTIONS].numpy()],
                    "jpeg": parsed[schema.IMAGE].numpy(),
                    "height": int(parsed[schema.HEIGHT]),
                    "width": int(parsed[schema.WIDTH]),
                    "source": parsed[schema.SOURCE].numpy().decode(),
                }
            )
    return examples


def write_csv(path: Path, rows: list[tuple[str, str]], header=("image", "caption")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(*args: str, code: str = "", timeout: int = 120) -> subprocess.CompletedProcess:
    """Runs `python -m dual_encoder.data ARGS` in a fresh process; `code` runs first (e.g. a patch)."""
    program = (
        f"import runpy, sys\n{code}\n"
        f"sys.argv = ['python -m dual_encoder.data', *{list(args)!r}]\n"
        "runpy.run_module('dual_encoder.data', run_name='__main__', alter_sys=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def jpeg_bytes(pixels: np.ndarray, quality: int = 95) -> bytes:
    """`pixels` as JPEG bytes, as a dataset on disk would hold them."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_shard(path, records):
    """Writes ImageRecords with in-memory uint8 images to one shard (no writer logic involved)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            h, w = r.image.shape[:2]
            writer.write(schema.make_example(r.image_id, jpeg_bytes(r.image), r.captions, r.source, h, w))
    return str(path)


def tiny_config(epochs=3, **train):
    """The `sample` preset shrunk for tests (48 px, 32-d, batch 32); `train` overrides TrainConfig fields."""
    config = run_config.get_preset("sample")
    config.model.image_size = 48
    config.model.projection_dim = 32
    config.train.epochs = epochs
    config.train.batch_size = 32
    for key, value in train.items():
        setattr(config.train, key, value)
    return config

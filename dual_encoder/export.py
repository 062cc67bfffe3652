"""Export a trained DualEncoder as a TensorFlow SavedModel that plain TF code can use.

Endpoints take raw inputs so users need none of our code: `encode_image` takes images of any
size (resized inside, as in training) as uint8 0..255 or as float32/float64 in [0, 1] (the
tf.image convention; floats outside it are an error, not silently truncated), and `encode_text`
takes strings (tokenized inside the graph with tensorflow-text ops, hence `import
tensorflow_text` before loading). Both return L2-normalised float32 embeddings; `logit_scale`
is the log of the learned logit scale (and `logit_bias`, for a SigLIP-loss model, its bias).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from dual_encoder import files
from dual_encoder.data.pipeline import resize_image
from dual_encoder.errors import InvalidArgumentError

USAGE = """\
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the text endpoint uses
model = tf.saved_model.load("{path}")
image_embeddings = model.encode_image(uint8_images)   # [B, H, W, 3], any H and W; or floats in [0, 1]
text_embeddings = model.encode_text(tf.constant(["a dog on a beach"]))
similarity = tf.matmul(text_embeddings, image_embeddings, transpose_b=True)  # cosine
logits = tf.exp(model.logit_scale[0]) * similarity
"""


IMAGE_DTYPES = (tf.uint8, tf.float32, tf.float64)
FLOAT_RANGE_ERROR = "encode_image: float images must be in [0, 1] (tf.image convention); pass uint8 for 0..255 pixels"


def export_saved_model(model, path: str) -> str:
    """Writes `model` to `path` with `encode_image` / `encode_text` endpoints and signatures."""
    if model.text_preprocessor is None:
        raise InvalidArgumentError("the model has no text preprocessor, so `encode_text` cannot take raw strings")
    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function
    def encode_image(images):
        if images.dtype != tf.uint8:
            # Without this, 0..255 floats came out white and negative ones black, silently. Both ends are
            # checked per pixel, so NaN (which fails every comparison) is refused too.
            in_range = tf.reduce_all((images >= 0) & (images <= 1))
            tf.debugging.Assert(in_range, [FLOAT_RANGE_ERROR, "min", tf.reduce_min(images), "max", tf.reduce_max(images)])
            images = tf.cast(images, tf.float32) * 255.0
        pixels = resize_image(images, model.image_size, model.resize)
        return model.embed_images({"images": pixels}, training=False)

    for dtype in IMAGE_DTYPES:  # one concrete function each; the signature `encode_image` is the first (uint8)
        encode_image.get_concrete_function(tf.TensorSpec([None, None, None, 3], dtype, name="images"))

    def encode_text(texts):
        return model.encode_texts(texts)

    archive.add_endpoint("encode_image", encode_image)
    archive.add_endpoint("encode_text", encode_text, input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    archive.add_variable_collection("logit_scale", [model.logit_scale])  # reloaded: model.logit_scale[0]
    if model.logit_bias is not None:  # SigLIP: logits = exp(logit_scale) * cosine + logit_bias
        archive.add_variable_collection("logit_bias", [model.logit_bias])
    # What encode_image does to images, so readers can pre-resize identically without our code.
    archive.add_variable_collection("image_size", [tf.Variable(list(model.image_size), trainable=False, dtype=tf.int32)])
    archive.add_variable_collection("resize_mode", [tf.Variable(model.resize, trainable=False, dtype=tf.string)])
    archive.write_out(path, verbose=False)
    # sha256 of every file, beside them (TensorFlow ignores files it does not know): checked before evaluation loads it
    files.write_json(os.path.join(path, files.TREE_CHECKSUMS), files.tree_sha256(path, leave_out=(files.TREE_CHECKSUMS,)))
    return path

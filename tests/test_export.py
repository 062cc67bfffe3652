"""The SavedModel: plain TensorFlow loads it in a fresh process and gets the same embeddings."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import towers
from dual_encoder.export import export_saved_model
from dual_encoder.model import DualEncoder

CAPTIONS = ["two red circles on the left", "a blue square at the top", "an unseen word zebra"]

RELOAD = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  the tokenizer ops
assert "dual_encoder" not in sys.modules
model = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = {
    "image": model.encode_image(tf.constant(images)).numpy().tolist(),
    "text": model.encode_text(tf.constant(json.loads(sys.argv[3]))).numpy().tolist(),
    "logit_scale": float(model.logit_scale[0].numpy()),
    "image_size": model.image_size[0].numpy().tolist(),
    "resize_mode": model.resize_mode[0].numpy().decode(),
    "signature_image": model.signatures["encode_image"](images=tf.constant(images))["output_0"].numpy().tolist(),
    "float32_image": model.encode_image(images.astype(np.float32) / 255).numpy().tolist(),
    "float64_image": model.encode_image(images / 255.0).numpy().tolist(),
}
try:
    model.encode_image(images.astype(np.float32))  # 0..255 floats: an error, not black images
except tf.errors.InvalidArgumentError as error:
    out["float_error"] = "float images must be in [0, 1]" in str(error)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tiny_model():
    image = towers.build_image_tower("tiny", weights=None, image_size=48)
    vocabulary = towers.build_vocabulary(CAPTIONS * 20, size=60)
    text = towers.build_text_tower("tiny", pretrained=False, sequence_length=12, vocabulary=vocabulary)
    return DualEncoder(image.model, text.model, text.preprocessor, image_size=image.image_size, resize=image.resize,
                       projection_dim=16, head="mlp")


def test_fresh_process_gets_the_same_embeddings(tiny_model, tmp_path):
    path = export_saved_model(tiny_model, str(tmp_path / "saved_model"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 70, 90, 3), dtype=np.uint8)  # not the model's size: resized inside
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", RELOAD, path, str(tmp_path / "images.npy"), json.dumps(CAPTIONS)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    from dual_encoder.data.pipeline import resize_image

    expected_image = tiny_model.embed_images({"images": resize_image(images, tiny_model.image_size, tiny_model.resize)}).numpy()
    expected_text = tiny_model.encode_texts(tf.constant(CAPTIONS)).numpy()
    np.testing.assert_allclose(out["image"], expected_image, atol=1e-5)
    np.testing.assert_allclose(out["signature_image"], expected_image, atol=1e-5)
    np.testing.assert_allclose(out["float32_image"], expected_image, atol=1e-4)
    np.testing.assert_allclose(out["float64_image"], expected_image, atol=1e-4)
    assert out["float_error"] is True
    np.testing.assert_allclose(out["text"], expected_text, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text"], axis=1), 1.0, atol=1e-5)
    assert out["logit_scale"] == pytest.approx(float(tiny_model.logit_scale.numpy()))
    assert out["image_size"] == [48, 48] and out["resize_mode"] == tiny_model.resize


def test_saved_model_cli_lists_both_signatures(tiny_model, tmp_path):
    path = export_saved_model(tiny_model, str(tmp_path / "sm"))
    cli = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all", "--dir", path],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "signature_def['encode_image']" in cli.stdout and "signature_def['encode_text']" in cli.stdout
    assert "DT_UINT8" in cli.stdout and "DT_STRING" in cli.stdout


def test_config_round_trip_and_keras_save_load(tiny_model, tmp_path):
    import keras

    clone = DualEncoder.from_config(tiny_model.get_config())
    clone.set_weights(tiny_model.get_weights())
    texts = tf.constant(CAPTIONS)
    np.testing.assert_allclose(clone.encode_texts(texts), tiny_model.encode_texts(texts), atol=1e-6)
    tiny_model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.encode_texts(texts), tiny_model.encode_texts(texts), atol=1e-6)


def test_model_without_text_preprocessor_cannot_export(tiny_model, tmp_path):
    bare = DualEncoder(tiny_model.image_encoder, tiny_model.text_encoder, None, image_size=(48, 48), projection_dim=16)
    with pytest.raises(ValueError, match="preprocessor"):
        export_saved_model(bare, str(tmp_path / "x"))


def test_a_bare_export_tells_evaluation_how_it_resizes(tiny_model, tmp_path):
    from dual_encoder.evaluation.embedders import ImagePrep, SavedModelEmbedder

    path = export_saved_model(tiny_model, str(tmp_path / "bare"))  # no results.json beside it
    assert SavedModelEmbedder(path, progress=False).prep == ImagePrep(48, tiny_model.resize)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_images_outside_0_1_are_an_error_at_both_ends(tiny_model, tmp_path, dtype):
    """Negative floats used to be clipped to black without a word; NaN and 0..255 floats are refused too."""
    reloaded = tf.saved_model.load(export_saved_model(tiny_model, str(tmp_path / "saved_model")))
    images = np.random.default_rng(0).uniform(0, 1, (2, 20, 30, 3)).astype(dtype)
    images[0, 0, 0] = [0.0, 1.0, 0.5]  # both ends themselves are fine
    assert reloaded.encode_image(tf.constant(images)).shape == (2, 16)
    for bad in (-5.0, -0.01, 1.01, 255.0, np.nan):
        broken = images.copy()
        broken[1, 3, 4, 2] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"float images must be in \[0, 1\]"):
            reloaded.encode_image(tf.constant(broken))


def test_a_damaged_export_is_named_with_how_to_write_it_again(tiny_model, tmp_path, capsys):
    from dual_encoder import files
    from dual_encoder.cli import evaluate
    from dual_encoder.evaluation.embedders import EmbedderError, SavedModelEmbedder

    path = Path(export_saved_model(tiny_model, str(tmp_path / "run" / "saved_model")))
    SavedModelEmbedder(path, progress=False)  # whole: loads
    weights = next((path / "variables").glob("variables.data-*"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(EmbedderError, match=r"is damaged \(variables/variables\.data-.*export it again from the run's model"):
        SavedModelEmbedder(path)
    assert evaluate.main(["--model", str(tmp_path / "run"), "--sample", "--sample-images", "4", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: the SavedModel at") and len(error.splitlines()) == 1
    (path / files.TREE_CHECKSUMS).unlink()  # an export from before the record: TensorFlow's own CRC check, explained
    with pytest.raises(EmbedderError, match=r"cannot be loaded \(DataLossError: .*export it again"):
        SavedModelEmbedder(path)


def test_exporting_again_into_the_same_folder_is_not_reported_as_damaged(tiny_model, tmp_path):
    from dual_encoder.evaluation.embedders import SavedModelEmbedder

    path = tmp_path / "saved_model"
    export_saved_model(tiny_model, str(path))
    export_saved_model(tiny_model, str(path))  # the repair an EmbedderError suggests
    assert SavedModelEmbedder(path, progress=False).encode_texts(["a red circle"]).shape == (1, 16)

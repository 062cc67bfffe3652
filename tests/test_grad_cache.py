"""GradCache (--grad-cache-chunk N): the towers run N pairs at a time, the loss sees the whole batch.

One SGD step at learning rate 1 moves every weight by minus its gradient, so equal weights after
the step mean equal gradients: chunked and whole-batch steps are compared that way, on one device
(here) and on two replicas (distribute_replicas.py --grad-cache-chunk, a process of its own). One epoch of train.py
with chunks against one without is the exact check in test_init_preset.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import config as run_config
from dual_encoder import towers, training
from dual_encoder.model import DualEncoder
from dual_encoder.testing import build_tiny_clip_preset

TESTS = Path(__file__).resolve().parent
CAPTIONS = ["a red circle", "two blue squares", "a green triangle on the left", "one small star",
            "a big yellow circle at the top", "three red squares", "a blue star on the right", "green circles at the bottom"]
IMAGE_IDS = [10, 11, 12, 13, 14, 15, 11, 17]  # pairs 1 and 6 show one image: the same-image mask matters
TOLERANCE = 1e-5


def tiny_model(loss: str, chunk) -> DualEncoder:
    image = towers.build_image_tower("tiny", weights=None, image_size=32)
    text = towers.build_text_tower("tiny", pretrained=False, sequence_length=8,
                                   vocabulary=towers.build_vocabulary(CAPTIONS * 10, size=60))
    model = DualEncoder(image.model, text.model, text.preprocessor, image_size=image.image_size, projection_dim=16,
                        head="mlp", dropout=0.0, loss=loss, grad_cache_chunk=chunk)
    for layer in model._flatten_layers():  # BERT's own dropout too: both passes over a chunk must agree
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


def clip_model(preset, chunk) -> DualEncoder:
    config = run_config.finetune(str(preset))
    config.finetune.grad_cache_chunk = chunk
    image, text, _ = training.build_towers(config, [])
    return training.build_model(config, image, text)


def one_step(model: DualEncoder, start) -> tuple[list, float]:
    """(weight changes of one SGD step at learning rate 1 from `start`, i.e. minus the gradients; the loss)."""
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    model.set_weights(start)
    rng = np.random.default_rng(0)
    batch = {"images": rng.uniform(0, 255, (len(CAPTIONS), *model.image_size, 3)).astype("float32"),
             "tokens": model.text_preprocessor(tf.constant(CAPTIONS)), "image_ids": tf.constant(IMAGE_IDS, tf.int64)}
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    loss = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0, shuffle=False).history["loss"][-1]
    return [keras.ops.convert_to_numpy(v) - b for v, b in zip(model.trainable_variables, before)], float(loss)


def assert_same_step(whole, chunked):
    (steps, loss), (chunk_steps, chunk_loss) = whole, chunked
    assert chunk_loss == pytest.approx(loss, abs=1e-6)
    largest = max(float(np.abs(s).max()) for s in steps)
    assert largest > 0.1  # the step really moved the weights
    assert len(steps) == len(chunk_steps)
    for s, c in zip(steps, chunk_steps):
        np.testing.assert_allclose(c, s, atol=TOLERANCE * max(1.0, largest))


@pytest.mark.parametrize("loss, chunk", [("infonce", 3), pytest.param("siglip", 3, marks=pytest.mark.slow),
                                         pytest.param("infonce", 1, marks=pytest.mark.slow),
                                         pytest.param("soft_target", 16, marks=pytest.mark.slow)])
def test_a_chunked_step_takes_the_whole_batchs_step(loss, chunk):
    """Chunks of 3 (3 + 3 + 2 pairs), of 1, and one larger than the batch; the tiny BERT's token
    and position embeddings get their gradients as they would from the whole batch."""
    keras.utils.set_random_seed(0)
    whole = tiny_model(loss, None)
    start = whole.get_weights()
    assert_same_step(one_step(whole, start), one_step(tiny_model(loss, chunk), start))


def test_a_chunked_step_of_a_clip_checkpoint_takes_the_whole_batchs_step(tmp_path):
    preset = build_tiny_clip_preset(tmp_path / "clip")
    whole = clip_model(preset, None)
    start = whole.get_weights()
    assert_same_step(one_step(whole, start), one_step(clip_model(preset, 3), start))


def test_the_chunk_size_is_saved_with_the_model(tmp_path):
    model = tiny_model("infonce", 4)
    model.save(tmp_path / "model.keras")
    assert keras.models.load_model(tmp_path / "model.keras").grad_cache_chunk == 4


@pytest.mark.slow
def test_two_replicas_with_chunks_take_the_single_device_whole_batch_step():
    """Chunks of 3 on each of two replicas (global negatives gathered as without chunks) against one
    device without chunks: even, uneven and one-sided splits of the batch."""
    done = subprocess.run([sys.executable, str(TESTS / "distribute_replicas.py"), "--grad-cache-chunk", "3", "infonce"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])["infonce"]
    for step in result["steps"]:
        losses = {side: logs["loss"] for side, logs in step["logs"].items()}
        assert losses["mirrored"] == pytest.approx(losses["single"], abs=TOLERANCE)
        assert step["max_abs_weight_diff"] <= TOLERANCE * max(1.0, step["max_abs_gradient"]), step
        assert step["max_abs_replica_spread"] == 0.0, step
    assert result["steps"][0]["max_abs_gradient"] > 0.1

"""Subprocess entry point of tests/test_grad_cache.py: one SGD step with GradCache chunks on two
logical CPU replicas (MirroredStrategy) next to the whole-batch step on one device; prints the
measurements as JSON. Two logical CPUs must be configured before TensorFlow starts its devices.
"""

import json
import sys

import tensorflow as tf

import dual_encoder.cli  # noqa: F401  the tools' TensorFlow defaults (oneDNN on), as in training

tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dual_encoder import towers  # noqa: E402
from dual_encoder.model import DualEncoder  # noqa: E402

CAPTIONS = ["a red circle", "two blue squares", "a green triangle on the left", "one small star",
            "a big yellow circle at the top", "three red squares", "a blue star on the right", "green circles at the bottom"]
IMAGE_IDS = [10, 11, 12, 13, 14, 15, 11, 17]  # pairs 1 and 6 show one image and land on different replicas
ROWS = (8, 5, 1)  # split 4 + 4, 3 + 2 (a partial last batch) and 1 + 0 (a replica without rows)
CHUNK = 3  # uneven chunks on every replica


def build_model(loss: str, vocabulary, chunk) -> DualEncoder:
    image = towers.build_image_tower("tiny", weights=None, image_size=32)
    text = towers.build_text_tower("tiny", pretrained=False, sequence_length=8, vocabulary=vocabulary)
    model = DualEncoder(image.model, text.model, text.preprocessor, image_size=image.image_size, projection_dim=16,
                        head="mlp", dropout=0.0, loss=loss, grad_cache_chunk=chunk)
    for layer in model._flatten_layers():  # the tiny BERT's own dropout too: the two passes must agree
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))  # the step moves each weight by minus its gradient
    return model


def one_step_each(model, dataset, start):
    steps = []
    for batch in dataset:
        model.set_weights(start)
        model.reset_metrics()
        logs = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
        local = model.distribute_strategy.experimental_local_results
        steps.append({"loss": float(logs["loss"][-1]),
                      "copies": [[np.array(c) for c in local(v.value)] for v in model.trainable_variables]})
    return steps


def compare(loss: str, vocabulary, strategy) -> dict:
    keras.utils.set_random_seed(0)
    single = build_model(loss, vocabulary, None)
    with strategy.scope():
        mirrored = build_model(loss, vocabulary, CHUNK)
    start, initial = single.get_weights(), [np.array(v) for v in single.trainable_variables]
    rng = np.random.default_rng(0)
    pairs = {"images": rng.uniform(0, 255, (len(CAPTIONS), 32, 32, 3)).astype("float32"),
             "tokens": single.text_preprocessor(tf.constant(CAPTIONS)), "image_ids": tf.constant(IMAGE_IDS, tf.int64)}
    batches = [tf.nest.map_structure(lambda t, n=n: t[:n], pairs) for n in ROWS]
    results = []
    for one, two in zip(one_step_each(single, batches, start), one_step_each(mirrored, batches, start)):
        reference = [c[0] for c in one["copies"]]
        results.append({
            "loss": {"single": one["loss"], "mirrored": two["loss"]},
            "max_abs_weight_diff": max(float(np.abs(c[0] - r).max()) for c, r in zip(two["copies"], reference)),
            "max_abs_replica_spread": max(float(np.abs(c[-1] - c[0]).max()) for c in two["copies"]),
            "max_abs_gradient": max(float(np.abs(r - s).max()) for r, s in zip(reference, initial)),
        })
    return {"steps": results}


if __name__ == "__main__":
    vocabulary = towers.build_vocabulary(CAPTIONS * 10, size=60)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(json.dumps({loss: compare(loss, vocabulary, strategy) for loss in sys.argv[1:] or ["infonce"]}))

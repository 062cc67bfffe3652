"""Subprocess entry point of tests/test_distribute.py and tests/test_grad_cache.py: single SGD
steps on two logical CPU replicas (MirroredStrategy) next to the same steps on one device; prints
the measurements as JSON. `--grad-cache-chunk N`: the replicas run GradCache in chunks of N (the
single device never does), so their steps must still be the whole batch's.

Two logical CPUs have to be configured before TensorFlow initialises its devices, which the
pytest process did long ago, hence a process of its own.
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


def build_model(loss: str, vocabulary, chunk=None) -> DualEncoder:
    image = towers.build_image_tower("tiny", weights=None, image_size=32)
    text = towers.build_text_tower("tiny", pretrained=False, sequence_length=8, vocabulary=vocabulary)
    model = DualEncoder(image.model, text.model, text.preprocessor, image_size=image.image_size,
                        projection_dim=16, head="mlp", dropout=0.0, loss=loss, grad_cache_chunk=chunk)
    for layer in model._flatten_layers():  # the tiny BERT's own dropout too: random masks differ per run
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    # Plain SGD at learning rate 1: the weights after one step are the weights minus the gradient.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    return model


class OneStepEach(keras.callbacks.Callback):
    """Starts every batch from the same weights and fresh metrics, and records what one step did:
    its logs and every replica's copy of every trainable variable."""

    def __init__(self, start):
        super().__init__()
        self.start, self.steps = start, []

    def on_train_batch_begin(self, batch, logs=None):
        self.model.set_weights(self.start)
        self.model.reset_metrics()

    def on_train_batch_end(self, batch, logs=None):
        local = self.model.distribute_strategy.experimental_local_results
        copies = [[np.array(c) for c in local(v.value)] for v in self.model.trainable_variables]
        self.steps.append({"logs": {k: float(v) for k, v in logs.items()}, "copies": copies})


def batches(preprocessor) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    pairs = {"images": rng.uniform(0, 255, (len(CAPTIONS), 32, 32, 3)).astype("float32"),
             "tokens": preprocessor(tf.constant(CAPTIONS)), "image_ids": tf.constant(IMAGE_IDS, tf.int64)}
    first = lambda n: tf.data.Dataset.from_tensors(tf.nest.map_structure(lambda t: t[:n], pairs))  # noqa: E731
    dataset = first(ROWS[0])
    for n in ROWS[1:]:
        dataset = dataset.concatenate(first(n))
    return dataset, pairs


def mask_effect(model: DualEncoder, pairs) -> float:
    """How much the same-image mask changes the single-device loss: the batch really tests it."""
    embeddings = model({"images": pairs["images"], "tokens": pairs["tokens"]})
    image, text = embeddings["image_embeddings"], embeddings["text_embeddings"]
    unique = tf.range(len(CAPTIONS), dtype=tf.int64)
    shared, apart = (float(model.contrastive_loss(image, text, ids)[0]) for ids in (pairs["image_ids"], unique))
    return abs(shared - apart)


def compare(loss: str, vocabulary, strategy, chunk=None) -> dict:
    keras.utils.set_random_seed(0)
    single = build_model(loss, vocabulary)
    with strategy.scope():
        mirrored = build_model(loss, vocabulary, chunk)
    start, trainable_start = single.get_weights(), [np.array(v) for v in single.trainable_variables]
    dataset, pairs = batches(single.text_preprocessor)
    runs = []
    for model in (single, mirrored):
        recorder = OneStepEach(start)
        model.fit(dataset, epochs=1, verbose=0, callbacks=[recorder])
        runs.append(recorder.steps)
    steps = []
    for rows, one, two in zip(ROWS, *runs):
        reference = [c[0] for c in one["copies"]]
        steps.append({
            "rows": rows,
            "logs": {"single": one["logs"], "mirrored": two["logs"]},
            "max_abs_weight_diff": max(float(np.abs(c[0] - r).max()) for c, r in zip(two["copies"], reference)),
            "max_abs_replica_spread": max(float(np.abs(c[-1] - c[0]).max()) for c in two["copies"]),
            "replicas": min(len(c) for c in two["copies"]),
            "max_abs_gradient": max(float(np.abs(r - s).max()) for r, s in zip(reference, trainable_start)),
            "variables": len(reference),
        })
    evaluations = []
    for model in (single, mirrored):  # all three batches: running means over 14 pairs
        model.set_weights(start)
        evaluations.append(model.evaluate(dataset, verbose=0, return_dict=True))
    return {"steps": steps, "evaluate": dict(zip(("single", "mirrored"), evaluations)), "mask_effect": mask_effect(single, pairs)}


if __name__ == "__main__":
    vocabulary = towers.build_vocabulary(CAPTIONS * 10, size=60)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # one per process: collective keys would clash
    args, chunk = sys.argv[1:], None
    if args[:1] == ["--grad-cache-chunk"]:
        chunk, args = int(args[1]), args[2:]
    print(json.dumps({loss: compare(loss, vocabulary, strategy, chunk) for loss in args or ["infonce"]}))

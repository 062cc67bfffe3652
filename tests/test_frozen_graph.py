"""Frozen inference graphs: batch norms folded into regular and depthwise convs, same outputs."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from dual_encoder import _compat
from dual_encoder.towers import frozen_graph

SHARED_LITE0 = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "efficientnet_lite0_keras"


def batch_norm(x, seed):
    """A batch norm with statistics far from the identity, so an unfolded or misfolded one shows."""
    layer = keras.layers.BatchNormalization()
    out = layer(x)
    rng = np.random.default_rng(seed)
    channels = int(x.shape[-1])
    layer.gamma.assign(rng.uniform(0.5, 2.0, channels))
    layer.beta.assign(rng.normal(0, 1, channels))
    layer.moving_mean.assign(rng.normal(0, 1, channels))
    layer.moving_variance.assign(rng.uniform(0.2, 3.0, channels))
    return out


@pytest.fixture(scope="module")
def mobile_block():
    """conv -> BN -> ReLU6 -> depthwise (multiplier 2) -> BN -> ReLU6 -> conv -> BN, then a conv
    with a bias (no batch norm: nothing to fold) and a map-wide affine (not per channel)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.ReLU(6.0)(batch_norm(keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs), 1))
    x = keras.layers.ReLU(6.0)(batch_norm(keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)(x), 2))
    x = batch_norm(keras.layers.Conv2D(5, 1, use_bias=False)(x), 3)
    x = keras.layers.Conv2D(3, 1)(x)
    x = keras.layers.Lambda(lambda t: t * 1.5 + 0.25)(keras.layers.Conv2D(3, 1, use_bias=False)(x))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def graph_of(model, shape):
    return _compat.constant_function(lambda x: model(x, training=False), [tf.TensorSpec(shape, tf.float32)]).graph.as_graph_def()


def test_each_batch_norm_becomes_a_bias_of_its_conv(mobile_block):
    folded, count = frozen_graph.fold_batch_norms(graph_of(mobile_block, [None, 12, 12, 3]))
    assert count == 3  # the two convs and the depthwise conv before a batch norm; not the map-wide affine
    ops = {node.name: node.op for node in folded.node}
    consumers = {name: [node.op for node in folded.node if any(i.split(":")[0] == name for i in node.input)] for name in ops}
    depthwise = [name for name, op in ops.items() if op == "DepthwiseConv2dNative"]
    assert len(depthwise) == 1 and consumers[depthwise[0]] == ["BiasAdd"]
    assert sum(op == "BiasAdd" for op in ops.values()) == 4  # three folded, one the conv's own bias
    assert [consumers[name] for name, op in ops.items() if op == "Conv2D"][-1] == ["Mul"]  # the map-wide scale stays


def test_the_folded_function_computes_what_the_model_computes(mobile_block):
    x = tf.random.stateless_uniform([6, 12, 12, 3], seed=[3, 4], maxval=255.0)
    forward = frozen_graph.inference_function(lambda v: mobile_block(v, training=False), [tf.TensorSpec([None, 12, 12, 3])])
    expected = mobile_block(x, training=False).numpy()
    got = forward(x).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert forward(x[:1]).shape == (1, 3)  # any batch size


def test_nested_inputs_and_graphs_without_convs_pass_through():
    forward = frozen_graph.inference_function(lambda d: d["a"] * 2 + d["b"], [{"a": tf.TensorSpec([None], tf.float32),
                                                                               "b": tf.TensorSpec([None], tf.float32)}])
    assert forward({"b": tf.constant([1.0]), "a": tf.constant([3.0])}).numpy().tolist() == [7.0]
    graph = _compat.constant_function(lambda v: v * 3.0, [tf.TensorSpec([None], tf.float32)]).graph.as_graph_def()
    assert frozen_graph.fold_batch_norms(graph) == (graph, 0)


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_LITE0.is_dir(), reason="../shared is absent")
def test_efficientnet_lite0_folds_every_batch_norm_with_the_same_features():
    from dual_encoder import towers

    tower = towers.build_image_tower(str(SHARED_LITE0), image_size=224, feature_stages=4)
    folded, count = frozen_graph.fold_batch_norms(graph_of(tower.model, [None, 224, 224, 3]))
    convs = {n.name for n in folded.node if n.op in frozen_graph.CONVOLUTIONS}
    assert count == len(convs) == 49  # 33 convs and 16 depthwise convs, each with its batch norm
    assert not [n for n in folded.node if n.op == "Mul" and any(i.split(":")[0] in convs for i in n.input)]
    x = tf.random.stateless_uniform([2, 224, 224, 3], seed=[5, 6], maxval=255.0)
    expected = tower.model(x, training=False).numpy()
    got = frozen_graph.inference_function(lambda v: tower.model(v, training=False), [tf.TensorSpec([None, 224, 224, 3])])(x)
    assert np.abs(got.numpy() - expected).max() <= 1e-5 * np.abs(expected).max()


def test_only_values_made_of_constants_count_as_constant():
    graph_def = tf.compat.v1.GraphDef()

    def node(name, op, *inputs):
        graph_def.node.add(name=name, op=op, input=list(inputs))

    node("c", "Const")
    node("square", "Mul", "c", "c")
    node("noise", "RandomUniform", "c")
    node("scaled_noise", "Mul", "c", "noise:0")
    node("loop", "AddV2", "again", "c")  # a v1 loop: loop -> again -> loop
    node("again", "Identity", "loop")
    node("ordered", "Identity", "c", "^noise")
    graph = frozen_graph._Graph(graph_def)
    verdicts = {name: graph.is_constant(name) for name in ("c", "square:0", "noise", "scaled_noise", "loop", "again", "ordered")}
    assert verdicts == {"c": True, "square:0": True, "noise": False, "scaled_noise": False, "loop": False, "again": False,
                        "ordered": False}

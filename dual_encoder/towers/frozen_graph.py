"""A frozen tower as an inference graph: weights as constants, batch norms folded into the convolutions.

With the weights as constants, TensorFlow's graph optimiser folds a batch norm's scale into the
Conv2D before it and fuses the conv with its bias and activation (one oneDNN kernel). It does not
do so for depthwise convolutions: each is followed by a separate multiply, add and ReLU6 over the
whole feature map, a fifth of EfficientNet-Lite0's time. `fold_batch_norms` rewrites every
`conv -> multiply by a per-channel constant -> add a per-channel constant` into
`conv (scaled filter) -> BiasAdd`, which the optimiser then fuses with the activation, for
depthwise and regular convolutions alike. EfficientNet-Lite0 on 2 cores, decoded photos, best of
3 passes in each of five runs: 120-130 images/s with the weights as constants, 144-153 folded
(OpenVINO's float32 runtime: 154-164); features within 2.0e-5 of the layer-by-layer ones, 1e-6 of
their largest value (benchmarks/extraction_ceiling.py).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from dual_encoder import _compat

CONVOLUTIONS = ("Conv2D", "DepthwiseConv2dNative")
ADDS = ("Add", "AddV2")
VARYING = ("Placeholder", "VarHandleOp", "ReadVariableOp", "TruncatedNormal", "Multinomial")  # and every "*Random*" op


def inference_function(function: Callable, input_signature: list, fold: bool = True) -> Callable:
    """`function` traced once for `input_signature` with every variable a constant and (with
    `fold`) its batch norms folded; a callable taking the same (nested) inputs and returning the
    first output. `fold=False` leaves the folding to grappler (regular convs only), for comparison."""
    frozen = _compat.constant_function(function, input_signature)
    if not fold:
        return lambda *inputs: frozen(*map(tf.convert_to_tensor, tf.nest.flatten(inputs)))[0]
    graph_def, _ = fold_batch_norms(frozen.graph.as_graph_def())
    feeds, fetch = [t.name for t in frozen.inputs], frozen.outputs[0].name

    def load():
        tf.graph_util.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(load, [])
    pruned = wrapped.prune([wrapped.graph.get_tensor_by_name(name) for name in feeds], wrapped.graph.get_tensor_by_name(fetch))
    return lambda *inputs: pruned(*map(tf.convert_to_tensor, tf.nest.flatten(inputs)))


# --- the rewrite --------------------------------------------------------------------------------


class _Graph:
    """Nodes by name, their consumers, and which of them hold constants only."""

    def __init__(self, graph_def: tf.compat.v1.GraphDef):
        self.graph_def = graph_def
        self.nodes = {node.name: node for node in graph_def.node}
        self.consumers: dict = {}
        for node in graph_def.node:
            for name in node.input:
                self.consumers.setdefault(_node_of(name), []).append(node)
        self._constant: dict = {}

    def only_consumer(self, node, ops) -> Optional[object]:
        consumers = self.consumers.get(node.name, [])
        return consumers[0] if len(consumers) == 1 and consumers[0].op in ops else None

    def is_constant(self, name: str) -> bool:
        """Whether a tensor's value comes from Const nodes alone (found without recursion: graphs are
        deep; a node that feeds itself, as in a v1 loop, is not constant)."""
        pending, open_nodes = [_node_of(name)], set()
        while pending:
            node = self.nodes[pending[-1]]
            if node.name in self._constant:
                pending.pop()
            elif node.op == "Const":
                self._constant[pending.pop()] = True
            elif node.op in VARYING or "Random" in node.op or not node.input or any(i.startswith("^") for i in node.input):
                self._constant[pending.pop()] = False
            else:
                todo = [_node_of(i) for i in node.input if _node_of(i) not in self._constant]
                if open_nodes.intersection(todo):
                    self._constant[pending.pop()] = False
                elif todo:
                    open_nodes.add(node.name)
                    pending += todo
                else:
                    open_nodes.discard(node.name)
                    self._constant[pending.pop()] = all(self._constant[_node_of(i)] for i in node.input)
        return self._constant[_node_of(name)]

    def other_input(self, node, known: str) -> Optional[str]:
        others = [name for name in node.input if _node_of(name) != known]
        return others[0] if len(others) == 1 and len(node.input) == 2 else None


def _node_of(tensor_name: str) -> str:
    return tensor_name.lstrip("^").split(":")[0]


def _tensor(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def _float32(node) -> bool:
    return "T" in node.attr and node.attr["T"].type == tf.float32.as_datatype_enum


def _nhwc(node) -> bool:
    return "data_format" not in node.attr or node.attr["data_format"].s == b"NHWC"  # (reading a missing key would add it)


def _candidates(graph: _Graph) -> list:
    """(conv, multiply, add, filter, scale, bias) for every conv whose only consumer multiplies it
    by a constant whose only consumer adds a constant (NHWC, float32)."""
    found = []
    for conv in graph.graph_def.node:
        if conv.op not in CONVOLUTIONS or not _float32(conv) or not _nhwc(conv):
            continue
        multiply = graph.only_consumer(conv, ("Mul",))
        add = multiply and graph.only_consumer(multiply, ADDS)
        scale = multiply and graph.other_input(multiply, conv.name)
        bias = add and graph.other_input(add, multiply.name)
        if scale and bias and all(graph.is_constant(t) for t in (conv.input[1], scale, bias)):
            found.append((conv, multiply, add, conv.input[1], scale, bias))
    return found


def _evaluate(graph_def, names: list) -> dict:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return dict(zip(names, session.run(names)))


def _const(name: str, value: np.ndarray):
    node = tf.compat.v1.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = tf.float32.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.astype(np.float32)))
    return node


def _folded(conv, filter_value: np.ndarray, scale: np.ndarray, bias: np.ndarray):
    """The scaled filter and the bias of one conv, or None when the constants are not per output
    channel (a scale or bias over the whole map, or a shape the filter does not explain)."""
    channels = filter_value.shape[2] * filter_value.shape[3] if conv.op == "DepthwiseConv2dNative" else filter_value.shape[3]
    per_channel = lambda v: v.size == channels and all(d == 1 for d in v.shape[:-1])  # noqa: E731
    if not (per_channel(scale) and per_channel(bias)):
        return None
    per_output = (1, 1, *filter_value.shape[2:]) if conv.op == "DepthwiseConv2dNative" else (1, 1, 1, channels)
    return filter_value * scale.reshape(per_output), bias.reshape(-1)


def fold_batch_norms(graph_def) -> tuple:
    """(the rewritten GraphDef, how many convs were folded): `conv(x, W) * s + b` with constant
    per-channel s and b becomes `BiasAdd(conv(x, W * s), b)` under the add's name, so its consumers
    are unchanged. Anything else is left as it is."""
    graph = _Graph(graph_def)
    candidates = _candidates(graph)
    if not candidates:
        return graph_def, 0
    values = _evaluate(graph_def, sorted({_tensor(t) for c in candidates for t in c[3:]}))
    replaced, dropped = {}, set()
    for conv, multiply, add, filter_name, scale_name, bias_name in candidates:
        folded = _folded(conv, *(values[_tensor(t)] for t in (filter_name, scale_name, bias_name)))
        if folded is not None:
            replaced[conv.name] = (add.name, *folded)
            dropped |= {multiply.name, add.name}
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in dropped:
            continue
        copy = out.node.add()
        copy.CopyFrom(node)
        if node.name in replaced:
            add_name, filter_value, bias = replaced[node.name]
            copy.input[1] = f"{node.name}/folded_filter"
            out.node.append(_const(copy.input[1], filter_value))
            out.node.append(_const(f"{node.name}/folded_bias", bias))
            bias_add = out.node.add(name=add_name, op="BiasAdd", input=[node.name, f"{node.name}/folded_bias"])
            bias_add.attr["T"].type = tf.float32.as_datatype_enum
            bias_add.attr["data_format"].s = b"NHWC"
    return out, len(replaced)

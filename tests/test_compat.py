"""Each private Keras / keras-hub API in dual_encoder/_compat.py still exists, checked by name.

When an upgrade removes or renames one, the failing test says which, instead of training or
loading failing somewhere deep inside.
"""

import inspect

import keras
import keras_hub
import pytest
import tensorflow as tf

from dual_encoder import _compat


def test_every_private_api_is_listed_and_checked_here():
    checked = {name for name in _compat.PRIVATE_APIS}
    assert len(checked) == 8, "a new private API in _compat.py needs its own check in this file"


@pytest.mark.parametrize("module, name", [
    ("keras_hub.src.layers.preprocessing.preprocessing_layer", "PreprocessingLayer"),
    ("keras_hub.src.utils.tensor_utils", "preprocessing_function"),
    ("keras_hub.src.utils.preset_utils", "BUILTIN_PRESETS"),
])
def test_private_keras_hub_names_import(module, name):
    assert _compat._private(module, name) is not None, f"{module}.{name}"


def test_a_missing_private_api_is_a_clear_error_naming_it():
    with pytest.raises(_compat.KerasApiChanged, match=r"keras_hub\.src\.nowhere\.Thing .*_compat\.py"):
        _compat._private("keras_hub.src.nowhere", "Thing")


def test_builtin_preset_handles_are_versioned_kaggle_handles():
    handle = _compat.builtin_preset_handle("bert_tiny_en_uncased")
    assert handle.startswith("kaggle://") and handle != "bert_tiny_en_uncased", "BUILTIN_PRESETS[...]['kaggle_handle']"
    assert _compat.builtin_preset_handle("not_a_preset") == "not_a_preset"


def test_tokenizers_and_packer_take_the_tf_only_switch():
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog"]
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=vocabulary, **_compat.TF_ONLY)
    assert tokenizer._allow_python_workflow is False, "tokenizer _allow_python_workflow"
    rebuilt = keras.saving.deserialize_keras_object(_compat.tf_only_config(keras.saving.serialize_keras_object(tokenizer)))
    _compat.force_tf_workflow(rebuilt)
    assert rebuilt._allow_python_workflow is False
    packer = keras_hub.layers.StartEndPacker(sequence_length=4, start_value=2, end_value=3, **_compat.TF_ONLY)
    assert packer(tokenizer(tf.constant(["a dog"]))).shape == (1, 4), "StartEndPacker _allow_python_workflow"


def test_transformer_feedforward_activation_can_be_swapped():
    layer = keras_hub.layers.TransformerEncoder(intermediate_dim=8, num_heads=1)
    layer.build((None, 3, 4))
    assert hasattr(layer, "_feedforward_intermediate_dense"), "TransformerEncoder._feedforward_intermediate_dense"
    exact_gelu = keras.activations.get("gelu")
    _compat.set_feedforward_activation(layer, exact_gelu)
    assert layer._feedforward_intermediate_dense.activation is exact_gelu
    assert layer.get_config()["activation"] == keras.activations.serialize(exact_gelu)


def test_set_trainable_reaches_sublayers_whose_flag_already_matched():
    assert hasattr(keras.layers.Layer, "_flatten_layers"), "keras.layers.Layer._flatten_layers"
    inner = keras.Sequential([keras.layers.Dense(2)])
    outer = keras.Sequential([inner])
    outer.build((None, 3))
    inner.layers[0].trainable = False
    outer.trainable = True  # keras keeps the Dense frozen: the outer flag already matched
    _compat.set_trainable(outer, True)
    assert inner.layers[0].trainable and len(outer.trainable_weights) == 2


def test_keras_fit_still_runs_the_symbolic_build_hook_we_replace():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    hook = getattr(TensorFlowTrainer, "_maybe_symbolic_build", None)
    assert hook is not None, "TensorFlowTrainer._maybe_symbolic_build"
    assert list(inspect.signature(hook).parameters) == ["self", "iterator", "data_batch"]
    for method in (TensorFlowTrainer.fit, TensorFlowTrainer.evaluate):
        assert "self._maybe_symbolic_build(" in inspect.getsource(method), f"{method.__name__} calls _maybe_symbolic_build"


def test_a_constant_function_holds_the_weights_as_constants():
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    x = tf.random.stateless_normal([4, 5], seed=[1, 2])
    frozen = _compat.constant_function(lambda v: model(v, training=False), [tf.TensorSpec([None, 5], tf.float32)])
    assert not frozen.variables and {"Const", "MatMul"} <= {op.type for op in frozen.graph.get_operations()}
    assert float(tf.reduce_max(tf.abs(frozen(x)[0] - model(x, training=False)))) < 1e-6

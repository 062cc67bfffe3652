"""Every use of a private Keras / keras-hub API, in one place.

Keras and keras-hub offer no public way to do these few things, so each is wrapped here under a
name that says what it does, and `PRIVATE_APIS` lists what each relies on.
`tests/test_compat.py` checks every entry against the installed versions, so an upgrade that
removes or renames one fails that test by name instead of breaking training somewhere deep.
Imports no stage of the package.
"""

from __future__ import annotations

import importlib

import keras

from dual_encoder.errors import DualEncoderError

# private API -> what we use it for (checked one by one in tests/test_compat.py)
PRIVATE_APIS = {
    "keras_hub.src.layers.preprocessing.preprocessing_layer.PreprocessingLayer":
        "base class of our text preprocessor (keras-hub's tf.data-safe preprocessing layer)",
    "keras_hub.src.utils.tensor_utils.preprocessing_function":
        "decorator that lets the preprocessor take raw strings in eager, tf.data and SavedModel graphs",
    "keras_hub.src.utils.preset_utils.BUILTIN_PRESETS":
        "the versioned kaggle handle of a preset name, as a tower's identity",
    "keras_hub tokenizers and StartEndPacker: _allow_python_workflow":
        "keep tokenization on tensorflow-text ops (keras-hub otherwise tokenizes eagerly in Python)",
    "keras_hub.layers.TransformerEncoder._feedforward_intermediate_dense":
        "the exact (erf) GELU of Hugging Face BERT checkpoints instead of keras-hub's tanh GELU",
    "tensorflow.python.framework.convert_to_constants.convert_variables_to_constants_v2":
        "a frozen tower's inference graph with its weights as constants (batch norms folded into convs)",
    "keras.layers.Layer._flatten_layers":
        "set trainable on every sublayer (the TF backend skips sublayers when the flag already matches)",
    "keras.src.backend.tensorflow.trainer.TensorFlowTrainer._maybe_symbolic_build":
        "build the optimizer under the model's strategy instead of Keras' symbolic pass over a batch",
}


class KerasApiChanged(DualEncoderError, ImportError):
    """A private Keras / keras-hub API this package relies on is gone: the installed version is
    newer (or older) than the one `dual_encoder/_compat.py` was written for."""


def _private(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise KerasApiChanged(f"{module}.{name} is not in the installed keras/keras-hub ({error}); "
                              "dual_encoder/_compat.py has to follow the upgrade (or pin the version in setup.cfg)") from None


PreprocessingLayer = _private("keras_hub.src.layers.preprocessing.preprocessing_layer", "PreprocessingLayer")
preprocessing_function = _private("keras_hub.src.utils.tensor_utils", "preprocessing_function")

# --- tokenization on TF ops only -------------------------------------------------------------

TF_ONLY = {"_allow_python_workflow": False}  # keyword for keras-hub tokenizers and packers


def tf_only_config(serialized: dict) -> dict:
    """A serialized keras-hub tokenizer that rebuilds on the TF (tensorflow-text) path only."""
    return {**serialized, "config": {**serialized["config"], **TF_ONLY}}


def force_tf_workflow(tokenizer) -> None:
    """Switches an already built keras-hub tokenizer to its TF path."""
    tokenizer._allow_python_workflow = False


# --- presets -----------------------------------------------------------------------------------


def builtin_preset_handle(name: str) -> str:
    """The versioned kaggle handle of a built-in keras-hub preset name, else `name` itself."""
    presets = _private("keras_hub.src.utils.preset_utils", "BUILTIN_PRESETS")
    return presets.get(name, {}).get("kaggle_handle", name)


# --- layers ------------------------------------------------------------------------------------


def set_feedforward_activation(transformer_layer, activation) -> None:
    """The activation of a keras-hub TransformerEncoder's feed-forward block (its config records it)."""
    transformer_layer.activation = transformer_layer._feedforward_intermediate_dense.activation = activation


def set_trainable(layer: keras.layers.Layer, value: bool) -> None:
    """`layer.trainable = value` for it and all its sublayers. keras' TF backend skips that
    assignment when the layer's own flag already equals `value`, leaving sublayers as they were."""
    for sublayer in layer._flatten_layers(include_self=True, recursive=True):
        type(sublayer).trainable.fset(sublayer, value)


class BuildsOptimizerInScope:
    """Mixin for a keras.Model whose variables all exist after `__init__`: before `fit` and
    `evaluate`, Keras' TF trainer runs a symbolic pass (`_maybe_symbolic_build`) that first
    averages a batch over replicas (`strategy.reduce`), which fails for dict batches under
    MultiWorkerMirroredStrategy and for a batch split unevenly over replicas. This replaces that
    pass by `build_optimizer()`, which the model defines."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        self.build_optimizer()


# --- inference graphs with the weights as constants ----------------------------------------------


def constant_function(function, input_signature):
    """`function` traced once for `input_signature` as a ConcreteFunction with its variables
    turned into constants (its `graph` holds them as Const nodes, for `towers.frozen_graph` to
    rewrite and for TensorFlow's graph optimiser to fold into the kernels)."""
    import tensorflow as tf

    convert = _private("tensorflow.python.framework.convert_to_constants", "convert_variables_to_constants_v2")
    return convert(tf.function(function, input_signature=input_signature).get_concrete_function())

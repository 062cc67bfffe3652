"""dual-encoder: CLIP-style image-text dual encoders for Keras 3 / TensorFlow.

One package per stage of the flow, each importing only the stages before it (checked by
tests/test_layout.py): data -> towers -> model -> {export, evaluation} -> {training, search}
-> cli, over the shared config, files, errors and _compat modules. The names in `__all__` are
the public API for notebooks and scripts (`import dual_encoder as de; de.train(...)`); they load
on first use, so importing the package is instant and changes nothing in the process (no
environment variables: the command-line tools set their TensorFlow defaults in
`dual_encoder.cli`).
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "RunConfig": "dual_encoder.config", "get_preset": "dual_encoder.config", "PRESETS": "dual_encoder.config",
    "DualEncoderError": "dual_encoder.errors",
    "write_shards": "dual_encoder.data.tfrecords",
    "build_image_tower": "dual_encoder.towers", "build_text_tower": "dual_encoder.towers",
    "DualEncoder": "dual_encoder.model",
    "export_saved_model": "dual_encoder.export",
    "load_embedder": "dual_encoder.evaluation", "zero_shot": "dual_encoder.evaluation",
    "retrieval_run": "dual_encoder.evaluation", "shard_records": "dual_encoder.evaluation",
    "folder_index": "dual_encoder.evaluation", "search": "dual_encoder.evaluation",
    "load_classification_dataset": "dual_encoder.evaluation.datasets",
    "train": "dual_encoder.training", "read_log": "dual_encoder.training",
    "build_index": "dual_encoder.search", "load_index": "dual_encoder.search",
    "export_search_model": "dual_encoder.search",
}
_STAGES = ("config", "data", "towers", "model", "export", "evaluation", "training")

__all__ = ["__version__", *_STAGES, *_PUBLIC]


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f"dual_encoder.{name}")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dual_encoder' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted(__all__)

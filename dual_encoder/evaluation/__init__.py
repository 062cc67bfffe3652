"""Evaluation: embedders, zero-shot, retrieval metrics, linear probe, metrics, plots, labelled datasets.

`runs` holds the library calls behind `evaluate.py` (zero-shot, retrieval, folder search); the
names below are the stage's public API, for notebooks as for the command-line tool.
"""

from dual_encoder.evaluation.embedders import load_embedder
from dual_encoder.evaluation.runs import (
    EvaluationError,
    folder_index,
    list_images,
    retrieval_run,
    search,
    shard_image_ids,
    shard_records,
    similarity_preview,
    zero_shot,
)

__all__ = ["EvaluationError", "folder_index", "list_images", "load_embedder", "retrieval_run", "search",
           "shard_image_ids", "shard_records", "similarity_preview", "zero_shot"]

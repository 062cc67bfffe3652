"""A search SavedModel: an index's embeddings and keys with the text encoder that matches them.

`export_search_model` writes one SavedModel whose `search(queries: string[N], k: int32)` returns
`{"keys": string[N, k'], "scores": float32[N, k']}`, best first, k' = min(k, index size): TF
Serving, or any TensorFlow program with `tensorflow_text` imported (the tokenizer ops), searches
the index with none of our code. Search is exact (cosine on L2-normalised vectors, as the
index's `exact` backend; an HNSW or IVF-PQ index is searched exactly here). `encode_text`
stays beside it, and small variables say what is inside: `index_size`, `index_root` (the keys
are paths relative to it) and `model_description` (the model's JSON record from the index).

The embeddings are a variable, not a graph constant: a 1M x 256 index is 1 GiB, and a
GraphDef cannot exceed 2 GiB, while variables go to the checkpoint files beside it. The
exported model is restored with `tf.saved_model.load` and re-saved whole, as TensorFlow
supports: tracking only the variables its `encode_text` reads would leave out the lookup
tables of BPE tokenizers (keras-hub's GPT-2 one), which then refuse to save as "untracked".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from dual_encoder import files
from dual_encoder.errors import DualEncoderError
from dual_encoder.evaluation.embedders import EmbedderError, ImagePrep, SavedModelEmbedder, find_saved_model
from dual_encoder.search.index import load_index

SEARCH_RECORD = "dual_encoder_search.json"  # marks a folder as a search export, which a later export may replace
FORMAT = 1
# The most scores held at once: queries are scored a block at a time, each block [queries, index size] at most
# 2^26 floats (256 MiB). 1,000 queries against 1M x 256-d, measured on 2 CPU cores: +0.5 GiB peak memory and 21 s
# in blocks, +3.9 GiB and 48 s as one [1000, 1M] product.
SCORE_BLOCK = 1 << 26
K_ERROR = "search: k (matches per query) must be at least 1"
USAGE = """\
import tensorflow as tf, tensorflow_text  # tensorflow_text registers the tokenizer ops
searcher = tf.saved_model.load("{path}")  # keep this reference while searching
found = searcher.search(tf.constant(["a dog on a beach"]), 5)  # "keys": paths under searcher.index_root, "scores": cosines
"""
GET_A_SAVED_MODEL = ("build the index with an exported SavedModel of ours: train one (python train.py ...), then "
                     "python evaluate.py index --model RUN_FOLDER --images DIR --index PATH --rebuild")


class SearchExportError(DualEncoderError, ValueError):
    """The index, the model or the output folder cannot make a search SavedModel; the message says why."""


def _search_module(model, vectors: np.ndarray, keys: list, root: str, model_description: dict):
    """The tf.Module that is saved: built here so that TensorFlow loads only when exporting."""
    import tensorflow as tf

    class SearchModel(tf.Module):
        """The restored export (re-saved whole), the index as variables, and exact top-k search."""

        def __init__(self):
            super().__init__(name="search_model")
            self.model = model
            self.embeddings = tf.Variable(vectors, trainable=False, name="embeddings")
            self.keys = tf.Variable(keys, dtype=tf.string, trainable=False, name="keys")
            self.index_size = tf.Variable(len(keys), dtype=tf.int32, trainable=False, name="index_size")
            self.index_root = tf.Variable(root, dtype=tf.string, trainable=False, name="index_root")
            self.model_description = tf.Variable(json.dumps(model_description, sort_keys=True), dtype=tf.string,
                                                 trainable=False, name="model_description")
            self._queries_per_block = max(1, SCORE_BLOCK // max(1, len(keys)))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="queries"), tf.TensorSpec([], tf.int32, name="k")])
        def search(self, queries, k):
            with tf.control_dependencies([tf.debugging.assert_greater_equal(k, 1, message=K_ERROR)]):
                k = tf.minimum(k, tf.shape(self.embeddings)[0])  # the check runs first: top_k's own error is cryptic
            vectors = tf.math.l2_normalize(self.model.encode_text(queries), axis=-1)
            scores, picked = self._top_k(vectors, k)
            return {"keys": tf.gather(self.keys, picked), "scores": scores}

        def _top_k(self, vectors, k):
            """(scores, rows of the index) [N, k], one block of queries at a time (SCORE_BLOCK)."""
            size = self._queries_per_block
            blocks = tf.maximum(1, (tf.shape(vectors)[0] + size - 1) // size)  # one for N = 0: [0, k']
            shape = tf.TensorShape([None, None])  # the last block may be shorter; the result is still [N, k']
            scores = tf.TensorArray(tf.float32, size=blocks, infer_shape=False, element_shape=shape)
            picked = tf.TensorArray(tf.int32, size=blocks, infer_shape=False, element_shape=shape)
            for block in tf.range(blocks):
                best = tf.math.top_k(tf.matmul(vectors[block * size : (block + 1) * size], self.embeddings, transpose_b=True), k)
                scores, picked = scores.write(block, best.values), picked.write(block, best.indices)
            return scores.concat(), picked.concat()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def encode_text(self, texts):
            return self.model.encode_text(texts)

    return SearchModel()


def _model_spec(manifest: dict, index_path: Path, model) -> str:
    """The SavedModel folder to embed: `model` if given, else the one the index records."""
    recorded = manifest.get("model", {})
    if recorded.get("type") != "savedmodel":  # then no --model can match it either
        kind = recorded.get("type")
        what = f"the keras-hub preset {recorded.get('preset')!r}" if kind == "keras_hub" else f"a model of type {kind!r}"
        raise SearchExportError(f"--index {index_path} was built with {what}; only exported SavedModels of ours can be "
                                f"embedded in a search SavedModel: {GET_A_SAVED_MODEL}")
    spec = str(model if model is not None else recorded.get("path"))
    try:
        return str(find_saved_model(spec))
    except EmbedderError:
        flag = "--model" if model is not None else f"the model recorded in {index_path}/manifest.json,"
        raise SearchExportError(f"{flag} {spec} holds no exported SavedModel (saved_model.pb, or saved_model/ in a "
                                f"training run folder); only those can be embedded in a search SavedModel: "
                                f"{GET_A_SAVED_MODEL}") from None


def _matching_embedder(spec: str, manifest: dict, index_path: Path) -> SavedModelEmbedder:
    """The SavedModel at `spec`, loaded (checksums checked) and refused unless it is the index's own model."""
    recorded = manifest.get("model", {}).get("preprocessing")
    prep = ImagePrep(**{k: v for k, v in recorded.items() if k != "decode"}) if recorded else None  # as the index was built
    embedder = SavedModelEmbedder(spec, prep=prep, progress=False)
    if embedder.fingerprint() != manifest.get("model_fingerprint"):
        raise SearchExportError(f"the SavedModel {embedder.path} is not the model --index {index_path} was built with "
                                f"({manifest.get('model', {}).get('path')}, or it changed since): pass that model as "
                                f"--model, or build the index again with this one (evaluate.py index --model "
                                f"{embedder.path} --images DIR --index {index_path} --rebuild)")
    return embedder


def _check_replaceable(out: Path) -> None:
    """Refuses an `out` that is a file or a non-empty folder other than an earlier search export."""
    if out.exists() and not out.is_dir():
        raise SearchExportError(f"--out {out} is a file; pass a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SEARCH_RECORD).is_file():
        raise SearchExportError(f"--out {out} exists and is not a search SavedModel (no {SEARCH_RECORD}); "
                                "pass a new or empty folder")


def export_search_model(index_path, out_dir, model: Optional[str] = None) -> Path:
    """Writes the search SavedModel of the index folder `index_path` to `out_dir` and returns it.

    `model` (a training run folder or SavedModel) defaults to the SavedModel the index was
    built with; either way it must be that model. The folder is written beside `out_dir` and
    renamed into place, so a kill leaves the previous export or nothing; an `out_dir` holding
    anything but a previous search export is refused.
    """
    index_path, out = Path(index_path), Path(out_dir)
    index = load_index(index_path, with_backend=False)
    spec = _model_spec(index.manifest, index_path, model)
    _check_replaceable(out)
    embedder = _matching_embedder(spec, index.manifest, index_path)
    module = _search_module(embedder.model, index.vectors.astype(np.float32, copy=False), index.paths, str(index.root),
                            index.manifest["model"])
    record = {"format": FORMAT, "index": str(index_path.resolve()), "index_size": len(index), "dim": int(index.vectors.shape[1]),
              "index_updated": index.manifest.get("updated"), "model": index.manifest["model"],
              "usage": USAGE.format(path=out.resolve())}
    with files.writing_folder(out) as tmp:
        _save(module, tmp)
        files.write_json(os.path.join(tmp, SEARCH_RECORD), record)
        files.write_json(os.path.join(tmp, files.TREE_CHECKSUMS), files.tree_sha256(tmp, leave_out=(files.TREE_CHECKSUMS,)))
    return out


def _save(module, path: str) -> None:
    """`search` is also `serving_default`, what TF Serving answers when a request names no signature."""
    import tensorflow as tf

    signatures = {"search": module.search, "serving_default": module.search, "encode_text": module.encode_text}
    tf.saved_model.save(module, path, signatures=signatures)

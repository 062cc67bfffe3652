"""Evaluation runs as library calls: zero-shot (+ linear probe), retrieval, folder search.

evaluate.py only parses flags and writes files; everything a notebook user would call lives
here. Each run embeds through the on-disk cache (`retrieval.EmbeddingCache`), counts unreadable
images instead of failing, and returns a JSON-ready report that records the model, the data,
the prompts and the preprocessing next to the numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dual_encoder import files
from dual_encoder.data.records import ImageRecord, SkipCounter
from dual_encoder.errors import DualEncoderError, InvalidArgumentError, WrongTypeError
from dual_encoder.evaluation import probe, retrieval, zeroshot
from dual_encoder.evaluation.datasets import IMAGE_EXTENSIONS, DataLayoutError, LabeledImages, images_in
from dual_encoder.evaluation.embedders import load_rgb
from dual_encoder.evaluation.metrics import classification_report


class EvaluationError(DualEncoderError, ValueError):
    """Nothing left to evaluate (e.g. every image unreadable)."""


def item_keys(sources: Sequence, ids: Sequence[str]) -> list[str]:
    """Cache keys: path + size + mtime for files on disk, the stable id for in-memory images."""
    return [
        retrieval.file_key(s) if isinstance(s, (str, os.PathLike)) and os.path.isfile(s) else str(i)
        for s, i in zip(sources, ids)
    ]


def embed_images(embedder, sources, keys, names, cache, skipped: SkipCounter):
    """(embeddings of the readable images, kept mask), computing only what the cache lacks."""

    def encode_missing(indices):
        return embedder.encode_image_sources([sources[i] for i in indices], skipped, [names[i] for i in indices])

    return retrieval.encode_cached(keys, encode_missing, cache)


def embed_texts(embedder, texts: Sequence[str], cache) -> np.ndarray:
    def encode_missing(indices):
        return embedder.encode_texts([texts[i] for i in indices]), np.ones(len(indices), dtype=bool)

    return retrieval.encode_cached([retrieval.text_key(t) for t in texts], encode_missing, cache)[0]


_LISTED_UNREADABLE = 50  # names of unreadable images listed in a report (all are counted)


def _common(embedder, skipped: SkipCounter, names: Sequence[str], kept: np.ndarray) -> dict:
    description = embedder.describe()
    unreadable = [str(names[i]) for i in np.flatnonzero(~kept)]
    return {
        "model": description,
        "preprocessing": description.get("preprocessing"),
        "skipped": skipped.as_dict(),
        "num_skipped_images": len(unreadable),
        "unreadable_images": unreadable[:_LISTED_UNREADABLE],
        "num_images_listed": len(names),
    }


def zero_shot(
    embedder,
    data: LabeledImages,
    templates_spec: Optional[str] = None,
    dataset: Optional[str] = None,
    cache: Optional[retrieval.EmbeddingCache] = None,
    shots: Optional[Sequence[probe.Shots]] = None,
    probe_config: probe.ProbeConfig = probe.ProbeConfig(),
) -> dict:
    """Zero-shot classification report; with `shots`, the linear-probe baseline on the same features.

    `data`: labelled images, e.g. `folders.load_classification_dataset("folder", DIR)`.
    `templates_spec`: a set name ("default", "imagenet", "auto"), a file, one template with '{}',
    or a list of templates. `shots`: e.g. [1, 4, "all"] (see `probe.parse_shots`).
    """
    if not isinstance(data, LabeledImages):
        raise WrongTypeError(f"data must be LabeledImages, not {type(data).__name__}; load a folder with "
                                       "dual_encoder.load_classification_dataset('folder', DIR)")
    shots = probe.parse_shots(shots) if shots else shots
    skipped = SkipCounter()
    image_emb, kept = embed_images(embedder, data.sources, item_keys(data.sources, data.ids), data.ids, cache, skipped)
    if not kept.any():
        raise EvaluationError(f"none of the {len(data)} images could be read (skipped: {skipped.as_dict()})")
    labels = data.labels[kept]
    template_name, templates = zeroshot.resolve_templates(templates_spec, dataset)
    weights = zeroshot.classifier_weights(lambda t: embed_texts(embedder, t, cache), data.class_names, templates)
    scores = zeroshot.zero_shot_scores(image_emb, weights)
    report = {"task": "zero-shot classification", "dataset": dataset}
    report.update(classification_report(labels, scores.argmax(axis=1), data.class_names, scores))
    report.update(_common(embedder, skipped, data.ids, kept), data=data.info)
    report["prompts"] = zeroshot.describe_prompts(template_name, templates, data.class_names)
    if shots:
        report["linear_probe"] = probe.run_linear_probe(
            image_emb, labels, data.class_names, shots, probe_config, zero_shot_scores=scores
        )
    return report


def _source_key(info: dict) -> str:
    return "records:" + files.json_digest(info, "sha1", length=16)


def _record_list(records) -> list[ImageRecord]:
    """`records` as a list, or an error saying what retrieval takes (a path or a string is not one)."""
    if not isinstance(records, (str, bytes, os.PathLike)) and hasattr(records, "__iter__"):
        records = list(records)
        if all(isinstance(r, ImageRecord) for r in records):
            return records
    raise WrongTypeError("records must be a list of ImageRecord, e.g. records, info = "
                                   "dual_encoder.shard_records(['tfrecords/sample'], 'val')")


def retrieval_run(
    embedder, records: Sequence[ImageRecord], source_info: dict, cache=None, skipped: Optional[SkipCounter] = None
) -> tuple[dict, dict]:
    """(report, arrays) for image<->text retrieval; `arrays` feeds the similarity-matrix plot."""
    skipped = skipped if skipped is not None else SkipCounter()
    records = _record_list(records)
    if not records:
        raise EvaluationError(f"the caption source has no images (skipped: {skipped.as_dict()})")
    sources = [r.path if r.path is not None else r.image for r in records]
    ids = [f"{_source_key(source_info)}:{r.image_id}" for r in records]
    names = [r.path or r.image_id for r in records]
    image_emb, kept = embed_images(embedder, sources, item_keys(sources, ids), names, cache, skipped)
    kept_records = [r for r, k in zip(records, kept) if k]
    if not kept_records:
        raise EvaluationError(f"none of the {len(records)} images could be read (skipped: {skipped.as_dict()})")
    texts, owner = retrieval.flatten_captions([r.captions for r in kept_records])
    text_emb = embed_texts(embedder, texts, cache)
    report = {"task": "retrieval", **retrieval.retrieval_report(image_emb, text_emb, owner)}
    report.update(_common(embedder, skipped, names, kept), data=source_info)
    arrays = {"records": kept_records, "image_emb": image_emb, "text_emb": text_emb, "owner": owner, "texts": texts}
    return report, arrays


def similarity_preview(arrays: dict, prep, count: int = 8):
    """(similarity [count, count], thumbnails, captions): the first caption of the first images."""
    _, first = np.unique(arrays["owner"], return_index=True)
    count = min(count, len(first))
    similarity = arrays["text_emb"][first[:count]] @ arrays["image_emb"][:count].T
    records = arrays["records"][:count]
    images = [prep(load_rgb(r.path if r.path is not None else r.image, r.image_id)) for r in records]
    return similarity, images, [arrays["texts"][i] for i in first[:count]]


def list_images(folder, skipped: Optional[SkipCounter] = None) -> list[str]:
    """Every image file below `folder` (names that are not UTF-8 are counted in `skipped`); a
    missing or image-less folder is a DataLayoutError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataLayoutError(f"--images {folder}: no such folder (expected a folder of images, sub-folders allowed)")
    paths = [str(p) for p in images_in(folder, skipped)]
    if not paths:
        raise DataLayoutError(f"--images {folder}: no images ({' '.join(IMAGE_EXTENSIONS)}) in it or below it")
    return paths


def folder_index(embedder, folder, cache: Optional[retrieval.EmbeddingCache] = None, *,
                 listed: Optional[tuple[list[str], SkipCounter]] = None) -> tuple[retrieval.EmbeddingIndex, SkipCounter]:
    """An index of every readable image below `folder`; only new or changed files are embedded.
    `listed`: (paths, skipped) from an earlier `list_images(folder, skipped)`, not listed again."""
    paths, skipped = listed if listed is not None else (None, SkipCounter())
    paths = paths if paths is not None else list_images(folder, skipped)
    keys = item_keys(paths, paths)
    embeddings, kept = embed_images(embedder, paths, keys, paths, cache, skipped)
    if cache is not None:  # the whole folder was listed: what it lacks was deleted or replaced
        cache.drop_files_below(folder, keep=keys)
        cache.save()
    if not kept.any():
        raise EvaluationError(f"none of the {len(paths)} images in {folder} could be read")
    return retrieval.EmbeddingIndex(embeddings, [p for p, k in zip(paths, kept) if k]), skipped


def _check_search_arguments(embedder, index, query, top_k) -> int:
    """`top_k` as an int; each argument checked here, where a wrong one can still be named, rather
    than failing as an AttributeError inside the embedder or numpy."""
    if not isinstance(query, str):
        raise WrongTypeError(f"query must be a string, e.g. 'a dog on a beach'; got {type(query).__name__} "
                                       f"{query!r:.40}")
    if not query.strip():
        raise InvalidArgumentError("the search query is empty")
    top_k = retrieval.check_top_k(top_k)
    if not isinstance(index, retrieval.EmbeddingIndex):
        raise WrongTypeError(f"index must be an EmbeddingIndex, e.g. from dual_encoder.folder_index(embedder, "
                                       f"DIR); got {type(index).__name__}")
    if not callable(getattr(embedder, "encode_texts", None)):
        raise WrongTypeError(f"embedder must have encode_texts, e.g. dual_encoder.load_embedder(PATH); got "
                                       f"{type(embedder).__name__}")
    return top_k


def search(embedder, index: retrieval.EmbeddingIndex, query: str, top_k: int = 9) -> list[tuple[str, float]]:
    """(path, cosine score) of the best `top_k` images for a text query, best first."""
    top_k = _check_search_arguments(embedder, index, query, top_k)
    scores, rows = index.search(embedder.encode_texts([query]), top_k)
    return [(index.keys[i], float(s)) for i, s in zip(rows[0], scores[0])]


def _shard_files(dirs: Sequence[str], split: str, skip_damaged: bool) -> list[str]:
    from dual_encoder.data import integrity, tfrecords

    return integrity.intact_shards(tfrecords.list_shards(list(dirs), split), skip_damaged)


def shard_image_ids(dirs: Sequence[str], split: str, skip_damaged: bool = False) -> list[str]:
    """The image ids in one split of some shard folders (e.g. the held-out `val` images), without decoding images.
    A damaged shard is an error naming it unless `skip_damaged` (then it is left out, with a warning)."""
    from dual_encoder.data import pipeline

    return [image_id for image_id, _ in pipeline.image_caption_lists(_shard_files(dirs, split, skip_damaged))]


def shard_records(dirs: Sequence[str], split: str, skip_damaged: bool = False) -> tuple[list[ImageRecord], dict]:
    """Records (JPEG bytes + captions) from TFRecord shards written by `python -m dual_encoder.data`.
    A damaged shard is an error naming it unless `skip_damaged` (then it is left out, with a warning)."""
    import tensorflow as tf

    from dual_encoder.data import schema

    files = _shard_files(dirs, split, skip_damaged)
    records = []
    for path in files:
        for example in tf.data.TFRecordDataset(path).map(schema.parse_example).as_numpy_iterator():
            captions = [c.decode("utf-8") for c in example[schema.CAPTIONS]]
            records.append(ImageRecord(example[schema.IMAGE_ID].decode("utf-8"), captions, "tfrecords",
                                       image=example[schema.IMAGE]))
    versions = [retrieval.file_key(f) if os.path.isfile(f) else f for f in files]  # changes when a shard does
    return records, {"type": "tfrecords", "dirs": [str(d) for d in dirs], "split": split, "shards": versions}

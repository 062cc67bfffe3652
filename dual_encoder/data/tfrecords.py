"""Writes `ImageRecord`s as sharded TFRecords that survive being killed, and finds them again.

An output folder holds:

    train-00000-of-00004.tfrecord     one tf.train.Example per image (format: schema.py)
    train-00000-of-00004.stats.json   that shard's counts; written after it, as its commit marker
    plan.json                         the configuration the folder was started with
    manifest.json                     totals, split, source and skips; written last

Split: by image, never by caption (captions of one image in both splits leak validation).
Records are sorted by id and permuted with `seed`; exactly round(n * val_fraction) go to `val`.

Resuming: a shard is written under a temporary name, renamed when complete, then its sidecar is
written. A rerun after a crash or `kill -9` keeps shards whose sidecar exists, rewrites the
rest and deletes stale temporary files, so the result has no duplicates and exact totals.
A folder started with another configuration (val_fraction, seed, images_per_shard, max_side,
source, or different records) is an error naming what differs; `overwrite=True` deletes the
files this writer names (never other files) and starts again. One writer per folder at a time:
the folder is locked for the whole write (folder_lock.py), and a second writer is refused at once.
All file operations go through `tf.io.gfile`, so DIR may be gs:// or hdfs://.

Skip counts in the manifest count images (`missing_file`, `not_a_file`, `unreadable`,
`undecodable`, `unsupported_image`, `no_captions`, `outside_image_dir`, `duplicate_image_id`),
captions (`empty_caption`, `duplicate_caption`, `malformed_caption`, and `<reason>_captions` for
captions lost with skipped images) and rows (`malformed_row`, `orphan_caption`). Images a caption
file named outside its own folder are counted in `images_outside_source_folder`.

Writing nothing is a failure, not an empty folder: when every image is skipped the writer removes
what it wrote and raises `NothingWrittenError`, and `list_shards` refuses a split the manifest
says holds 0 images, so training never starts on an empty dataset.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime
import functools
import hashlib
import json
import logging
import os
import re
from typing import Iterable, Optional, Union

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from dual_encoder import files
from dual_encoder.config import IMAGES_PER_SHARD, SPLIT_SEED, VAL_FRACTION
from dual_encoder.data import schema
from dual_encoder.data.collect import is_url, skip_image, warn_skips
from dual_encoder.data.folder_lock import folder_lock
from dual_encoder.data.images import SkippedImageError, read_bytes, to_rgb_jpeg
from dual_encoder.data.records import ImageRecord, SkipCounter
from dual_encoder.errors import DualEncoderError, InvalidArgumentError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
MANIFEST = "manifest.json"
PLAN = "plan.json"
STATS_SUFFIX = ".stats.json"
_OWN_FILE = re.compile(
    r"^((train|val)-\d{5}-of-\d{5}(" + re.escape(schema.SHARD_SUFFIX) + r"|\.stats\.json)|plan\.json|manifest\.json)"
    r"(" + re.escape(files.TMP_MARK) + r"[0-9a-f]+)?$"
)


class ConfigMismatchError(DualEncoderError, ValueError):
    """The output folder was started with another configuration."""


class NoShardsError(DualEncoderError, ValueError):
    """A folder holds no finished shards (or no image) for the requested split."""


class NothingWrittenError(DualEncoderError, ValueError):
    """Every image was skipped; the message says why, by reason."""


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{schema.SHARD_SUFFIX}"


def split_by_image(records: Iterable[ImageRecord], val_fraction: float, seed: int) -> dict[str, list[ImageRecord]]:
    """Deterministic split: the same ids, fraction and seed give the same split on any machine."""
    ordered = sorted(records, key=lambda r: r.image_id)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_val = round(len(ordered) * val_fraction)
    return {"train": [ordered[i] for i in order[n_val:]], "val": [ordered[i] for i in order[:n_val]]}


def write_shards(
    records: Iterable[ImageRecord],
    out_dir: str,
    *,
    source_info: dict,
    skipped: SkipCounter,
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
    images_per_shard: int = IMAGES_PER_SHARD,
    max_side: Optional[int] = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Writes (or finishes writing) the shards of `records` into `out_dir`; returns the manifest.

    `skipped` holds what the source already skipped; it is added to the manifest, not changed.
    """
    records = list(records)
    _check_arguments(records, skipped, val_fraction, images_per_shard, max_side)
    splits = split_by_image(records, val_fraction, seed)
    if not splits["train"]:
        raise InvalidArgumentError(f"val_fraction {val_fraction} leaves no training image out of {len(records)}")
    config = {
        "val_fraction": val_fraction,
        "seed": seed,
        "images_per_shard": images_per_shard,
        "max_side": max_side,
        "source": source_info,
        "images": len(records),
        "records_sha256": _records_digest(records),
    }
    shards = []
    for split in SPLITS:
        chunks = _chunks(splits[split], images_per_shard)
        shards += [(split, shard_name(split, i, len(chunks)), chunk) for i, chunk in enumerate(chunks)]
    created = not tf.io.gfile.isdir(out_dir)
    tf.io.gfile.makedirs(out_dir)
    try:
        with folder_lock(out_dir):
            plan = _start(out_dir, config, overwrite)
            stats, resumed = _write_all(out_dir, shards, plan["fingerprint"], max_side, progress)
            manifest = _manifest(plan, config, stats, skipped)
            _check_written(out_dir, manifest)
            manifest = _commit_manifest(out_dir, manifest)
    except NothingWrittenError:
        if created:
            _remove_empty_folder(out_dir)
        raise
    if progress:
        note = f"; {resumed} of {len(shards)} shards were already complete" if resumed else ""
        print(summary_line(manifest, out_dir) + note)
    return manifest


def _write_all(out_dir: str, shards: list, fingerprint: str, max_side: Optional[int], progress: bool) -> tuple[dict, int]:
    """Writes every shard not committed by an earlier run; returns ({shard name: stats}, shards resumed)."""
    stats, resumed = {}, 0
    encode = functools.partial(_encode, max_side=max_side)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, tqdm(
        total=sum(len(chunk) for _, _, chunk in shards), unit="img", desc="writing shards", disable=not progress
    ) as bar:
        for split, name, chunk in shards:
            stats[name] = _committed_stats(out_dir, name, fingerprint)
            if stats[name] is not None:
                resumed += 1
            else:
                stats[name] = _write_shard(out_dir, split, name, chunk, pool.map(encode, chunk), fingerprint)
            bar.update(len(chunk))
    return stats, resumed


def _check_written(out_dir: str, manifest: dict) -> None:
    """A run that wrote no image removes its files and fails: an empty folder would pass for data."""
    if manifest["images_written"]:
        return
    _remove(out_dir, [n for n in tf.io.gfile.listdir(out_dir) if _OWN_FILE.match(n)])
    raise NothingWrittenError(f"no image could be written to {out_dir}: every one was skipped "
                              f"({_skip_list(manifest['skipped'])}); see the warnings above")


def _commit_manifest(out_dir: str, manifest: dict) -> dict:
    """Writes the manifest, unless the folder already holds this one (a rerun on a complete folder):
    then the old one stays, so that readers keyed on its digest (train.py's resume check) see no change."""
    path = os.path.join(out_dir, MANIFEST)
    if tf.io.gfile.exists(path):
        with contextlib.suppress(ValueError), tf.io.gfile.GFile(path, "r") as f:
            old = json.load(f)
            same = [k for k in old if k != "finished"]  # keys newer than the folder's manifest are not a change
            if all(old[k] == manifest.get(k) for k in same) and set(same) <= set(manifest):
                return old
    files.write_json(path, manifest)
    return manifest


def _remove_empty_folder(out_dir: str) -> None:
    """Removes a folder this run created, only if nothing else was put there meanwhile."""
    if is_url(out_dir):
        if not tf.io.gfile.listdir(out_dir):
            tf.io.gfile.rmtree(out_dir)
    else:
        with contextlib.suppress(OSError):
            os.rmdir(out_dir)  # refuses a folder that is not empty


def _skip_list(skipped: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in skipped.items()) or "nothing"


def summary_line(manifest: dict, out_dir: str) -> str:
    """E.g. `wrote 159 images / 795 captions in 1 shard to DIR (train 127, val 32); skipped: ...`."""
    splits = ", ".join(f"{s} {info['images']}" for s, info in manifest["splits"].items())
    plural = "" if manifest["shards"] == 1 else "s"
    outside = manifest.get("images_outside_source_folder", 0)
    outside = f"; {outside} of them from outside the caption file's folder (absolute or ../ paths)" if outside else ""
    return (
        f"wrote {manifest['images_written']} images / {manifest['captions_written']} captions in "
        f"{manifest['shards']} shard{plural} to {out_dir} ({splits}){outside}; skipped: {_skip_list(manifest['skipped'])}"
    )


def read_manifest(directory: str) -> dict:
    """The manifest of a finished folder; a clear error for an unfinished or foreign folder."""
    path = os.path.join(directory, MANIFEST)
    if not tf.io.gfile.exists(path):
        if not tf.io.gfile.isdir(directory):
            raise NoShardsError(f"{directory}: no such folder")
        if tf.io.gfile.exists(os.path.join(directory, PLAN)):
            raise NoShardsError(f"{directory}: writing was interrupted (no {MANIFEST}); rerun the same command to finish it")
        raise NoShardsError(f"{directory}: no {MANIFEST}; write shards there with python -m dual_encoder.data")
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def list_shards(dirs: Union[str, Iterable[str]], split: str) -> list[str]:
    """Paths of the `split` shards of one or several folders, read as one dataset."""
    dirs = [dirs] if isinstance(dirs, str) else list(dirs)
    if not dirs:
        raise NoShardsError("no shard folder given")
    paths = []
    for directory in dirs:
        manifest = read_manifest(directory)
        splits = manifest.get("splits", {})
        names = splits.get(split, {}).get("shards", [])
        if not names:
            have = ", ".join(s for s, info in splits.items() if info.get("shards")) or "none"
            raise NoShardsError(f"{directory}: no {split!r} shards (splits with shards: {have})")
        if splits[split].get("images") == 0:
            raise NoShardsError(f"{directory}: {MANIFEST} says split {split!r} holds 0 images (skipped when written: "
                                f"{_skip_list(manifest.get('skipped', {}))}); write the shards again from usable images")
        for name in names:
            path = os.path.join(directory, name)
            if not tf.io.gfile.exists(path):
                raise NoShardsError(f"{path}: listed in {MANIFEST} but missing")
            paths.append(path)
    return paths


def _check_arguments(records, skipped, val_fraction, images_per_shard, max_side) -> None:
    if not records:
        raise NothingWrittenError(f"no images to write: the source yielded no usable image (skipped: "
                                  f"{_skip_list(SkipCounter(skipped).as_dict())}; see the warnings above)")
    if not 0 <= val_fraction < 1:
        raise InvalidArgumentError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if images_per_shard < 1:
        raise InvalidArgumentError(f"images_per_shard must be at least 1, got {images_per_shard}")
    if max_side is not None and max_side < 1:
        raise InvalidArgumentError(f"max_side must be at least 1, got {max_side}")
    repeated = [i for i, n in collections.Counter(r.image_id for r in records).items() if n > 1]
    if repeated:
        raise InvalidArgumentError(f"image id {repeated[0]!r} appears in several records; merge its captions into one record")


def _records_digest(records: list[ImageRecord]) -> str:
    """Identifies the input, so a rerun on changed data cannot mix with old shards."""
    digest = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.image_id):
        digest.update(json.dumps([r.image_id, r.source, r.path, r.captions]).encode("utf-8"))
    return digest.hexdigest()


def _chunks(items: list, size: int) -> list[list]:
    """Near-equal consecutive chunks of at most `size` items."""
    count = -(-len(items) // size)
    return [[items[i] for i in part] for part in np.array_split(np.arange(len(items)), count)] if count else []


def _start(out_dir: str, config: dict, overwrite: bool) -> dict:
    """Creates or checks plan.json and removes stale temporary files; returns the plan."""
    fingerprint = files.json_digest(config)
    plan_path = os.path.join(out_dir, PLAN)
    own = [n for n in tf.io.gfile.listdir(out_dir) if _OWN_FILE.match(n)]
    _remove(out_dir, [n for n in own if files.TMP_MARK in n or overwrite])  # temporaries are never complete
    own = [n for n in own if files.TMP_MARK not in n and not overwrite]
    if tf.io.gfile.exists(plan_path):
        with tf.io.gfile.GFile(plan_path, "r") as f:
            plan = json.load(f)
        if plan.get("fingerprint") != fingerprint:
            raise ConfigMismatchError(
                f"{out_dir} was started with another configuration ({_differences(plan.get('config', {}), config)}); "
                "use a new output folder, or --overwrite (python -m dual_encoder.data) to start this one again"
            )
        return plan
    if own:
        raise ConfigMismatchError(
            f"{out_dir} holds shards without {PLAN} ({own[0]}, ...); use a new output folder, or --overwrite (python -m "
            f"dual_encoder.data)"
        )
    plan = {"config": config, "fingerprint": fingerprint, "created": _now()}
    files.write_json(plan_path, plan)
    return plan


def _differences(old: dict, new: dict) -> str:
    changed = [k for k in new if k != "records_sha256" and old.get(k) != new[k]]
    if changed:
        return "; ".join(f"{k}: {old.get(k)!r} then, {new[k]!r} now" for k in changed)
    return "the source now yields other images or captions"


def _remove(out_dir: str, names: list[str]) -> None:
    for name in names:
        tf.io.gfile.remove(os.path.join(out_dir, name))


def _committed_stats(out_dir: str, name: str, fingerprint: str) -> Optional[dict]:
    """The sidecar of a shard completed by an earlier run, or None if the shard must be (re)written."""
    sidecar = os.path.join(out_dir, name.removesuffix(schema.SHARD_SUFFIX) + STATS_SUFFIX)
    if not (tf.io.gfile.exists(sidecar) and tf.io.gfile.exists(os.path.join(out_dir, name))):
        return None
    try:
        with tf.io.gfile.GFile(sidecar, "r") as f:
            stats = json.load(f)
    except ValueError:  # a torn sidecar (renames are copies on some file systems): redo the shard
        return None
    return stats if stats.get("fingerprint") == fingerprint else None


def _encode(record: ImageRecord, max_side: Optional[int]):
    """One serialized Example, or the exception that makes the image a counted skip (its `reason`)."""
    try:
        data = record.image if record.image is not None else read_bytes(record.path)
        jpeg, height, width = to_rgb_jpeg(data, max_side=max_side, name=record.path or record.image_id)
    except SkippedImageError as e:
        return e
    return schema.make_example(record.image_id, jpeg, record.captions, record.source, height, width)


def _write_shard(out_dir, split, name, chunk, encoded, fingerprint) -> dict:
    """Writes to a temporary name, renames, then commits with the sidecar."""
    skipped, problems = SkipCounter(), []
    images = captions = outside = 0
    with files.writing(os.path.join(out_dir, name)) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for record, example in zip(chunk, encoded):
            if isinstance(example, SkippedImageError):
                skip_image(skipped, example.reason, str(example), len(record.captions))
                problems.append(f"{example} ({example.reason})")
                continue
            writer.write(example)
            images += 1
            captions += len(record.captions)
            outside += record.outside_source_folder
    warn_skips(logger, f"{name}: images skipped", problems)
    stats = {
        "shard": name,
        "split": split,
        "images": images,
        "captions": captions,
        "images_outside_source_folder": outside,
        "skipped": skipped.as_dict(),
        "fingerprint": fingerprint,
    }
    files.write_json(os.path.join(out_dir, name.removesuffix(schema.SHARD_SUFFIX) + STATS_SUFFIX), stats)
    return stats


def _manifest(plan: dict, config: dict, stats: dict[str, dict], source_skipped: SkipCounter) -> dict:
    skipped = SkipCounter(source_skipped)
    splits = {}
    for name, shard in stats.items():
        skipped.update(shard["skipped"])
        entry = splits.setdefault(shard["split"], {"images": 0, "captions": 0, "shards": []})
        entry["images"] += shard["images"]
        entry["captions"] += shard["captions"]
        entry["shards"].append(name)
    return {
        "images_written": sum(s["images"] for s in splits.values()),
        "captions_written": sum(s["captions"] for s in splits.values()),
        "images_outside_source_folder": sum(s.get("images_outside_source_folder", 0) for s in stats.values()),
        "shards": len(stats),
        "split": {"by": "image", "val_fraction": config["val_fraction"], "seed": config["seed"]},
        "splits": splits,
        "source": config["source"],
        "skipped": skipped.as_dict(),
        "max_side": config["max_side"],
        "images_per_shard": config["images_per_shard"],
        "schema": "dual_encoder.data.schema (one tf.train.Example per image)",
        "created": plan["created"],
        "finished": _now(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

"""Tower features computed once and stored next to the shards, for training with frozen towers.

A frozen tower maps each image and each caption to the same features in every epoch, so the
reference recipe (Xception-299 + BERT, both frozen) would spend hours per epoch recomputing
them. Here they are computed once; training then runs only the heads.

Layout: one cache file per shard and tower, in a folder keyed by that tower,

    <shard dir>/features/<kind>-<tower name>-<key>/tower.json                 the tower's spec, for people
    <shard dir>/features/<kind>-<tower name>-<key>/train-00000-of-00004.npz    that shard's features

The key hashes the tower's spec (weights + preprocessing: image size, resize mode and pixel
normalisation; sequence length and tokenizer vocabulary), the dtype policy and `FORMAT`, so any
change lands in a new folder. A tower with random weights (`spec["weights"] is None`) is keyed
by a digest of its actual weights instead: another initialisation never reads these features,
while a rerun with the same seed (same initial weights) reuses them.

Each file holds its arrays, the shard's fingerprint (size + a digest of its first MiB, so a
rewritten shard is noticed) and a sha256 of the arrays. It is written under a temporary name and
renamed (via `tf.io.gfile`, so shard folders on gs:// work too), so an interrupted extraction
leaves whole files only: a rerun keeps them and computes the rest. A file that fails its checks
(truncated, torn, stale) is computed again. Concurrent extractions into one folder (the workers of
a multi-worker run) are safe but each computes everything: temporaries are only removed once an
hour old. Where the shard folder is read-only, the features are computed into memory for that
run only (with a warning).

Captions are computed by token length (`TextFeatures`): tokenized once, sorted by length, each
batch run at its longest caption's length. Where the tower pools through the padding mask this
gives the full length's features (checked once per extraction; otherwise all captions run at the
full length), so keys are unchanged; a 13-token COCO caption then costs about 13/64 of the work of
MiniLM at 64 tokens. Images skip a resize to the size they already have, and the image tower runs as a
graph with its weights as constants and every batch norm folded into its conv, depthwise ones
included (towers/frozen_graph.py). The captions are computed in a second thread while the images
are (`concurrent_towers`): on an AMD Zen 5 host 12.4-13.6 s against 13.9-19.8 s one tower after
the other for 1,000 Flickr8k photos and their captions on 2 cores, five runs each
(benchmarks/results/extraction_concurrency.json), with bit-identical features; on a Zen 4 host
20.7-24.9 s against 22.7-24.7 s, three runs each (benchmarks/results/extraction_throughput_folded.json).

Pairs come from `pair_dataset`, with the semantics of `pipeline.pair_dataset`: up to K captions
per image sampled without replacement each epoch, hashed image ids for the same-image mask,
caption keys for the same-caption mask (stored with the caption features; files written before
they were are read as they are, the keys computed from the shard's captions), shuffled pairs.
Features stay in memory once (per image and per caption); batches gather rows by index, so an epoch of 90,000 pairs takes seconds.

Augmented views (`augmentation=ViewAugmentation(views=K)`, `data/augment.py`): the training
shards also get K random-resized-crop / flip views per image, computed once into a third folder
`views-<tower name>-<key>` whose key adds the augmentation's spec to the image tower's (change K,
the crop scale, the flip or the seed and they are computed again). Each training epoch samples,
per image, one of its K + 1 feature rows (the plain image or one of its views); validation reads
the plain features only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import zipfile
from typing import Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from dual_encoder import files
from dual_encoder.data import caption_keys, pipeline, schema
from dual_encoder.data.augment import ViewAugmentation
from dual_encoder.errors import DualEncoderError, InvalidArgumentError, PathNotFoundError
from dual_encoder.towers import frozen_graph
from dual_encoder.towers.features import TextFeatures
from dual_encoder.towers.image import ImageTower
from dual_encoder.towers.text import TextTower

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when extraction changes what a cache file holds: old folders are then ignored
FOLDER = "features"
SUFFIX = ".npz"
_HEAD_BYTES = 1 << 20
_STALE_TMP_SECONDS = 3600  # younger temporaries may belong to a writer still running (another worker)
LOOKUP_THREADS, PREFETCH_BATCHES = 2, 4  # cached batches: gathering 256 rows takes ~1 ms, a step 15+ ms on CPU
KINDS = ("image", "text")  # and "views", the augmented views of the images, with an augmentation
Tower = Union[ImageTower, TextTower]


class CacheMiss(DualEncoderError):
    """A shard's cache file is absent, or unusable (`reason` says why); extraction rebuilds it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclasses.dataclass
class CachedFeatures:
    """The features of some shards, all in memory: images in shard order, captions grouped by image."""

    image_features: np.ndarray  # float32 [N, image feature dim]
    image_ids: np.ndarray  # int64 [N], pipeline.hash_image_ids of the image ids
    text_features: np.ndarray  # float32 [C, text feature dim], C = caption_counts.sum()
    caption_counts: np.ndarray  # int64 [N]
    shard_sizes: list  # images per shard, to reproduce the unshuffled read order
    caption_keys: Optional[np.ndarray] = None  # int64 [C], caption_keys.caption_keys of each caption
    image_views: Optional[np.ndarray] = None  # float32 [N, K, image feature dim]: K augmented views per image

    def caption_images(self) -> np.ndarray:
        """int64 [C]: the image row of each caption."""
        return np.repeat(np.arange(len(self.caption_counts)), self.caption_counts)


@dataclasses.dataclass
class CacheReport:
    """What `FeatureCache.extract` did; `as_dict()` goes into results.json."""

    folders: list
    computed: int = 0  # cache files written (shard x tower)
    reused: int = 0
    rebuilt: dict = dataclasses.field(default_factory=dict)  # path -> why the old file was unusable
    seconds: float = 0.0
    stored: bool = True  # False: a folder was not writable, features were kept in memory only
    computed_rows: dict = dataclasses.field(default_factory=lambda: {kind: 0 for kind in KINDS})  # images, captions
    # wall seconds per tower; with concurrent towers the image and text seconds overlap (`seconds` is the whole call)
    compute_seconds: dict = dataclasses.field(default_factory=lambda: {kind: 0.0 for kind in KINDS})
    concurrent_towers: bool = False  # the captions were computed while the images were
    length_buckets: dict = dataclasses.field(default_factory=dict)  # tokens a batch ran at -> captions computed

    def as_dict(self) -> dict:
        return {"used": True, "folders": self.folders, "stored": self.stored, "files_computed": self.computed,
                "files_reused": self.reused, "rebuilt": self.rebuilt, "extraction_seconds": self.seconds,
                "computed_rows": self.computed_rows, "compute_seconds": self.compute_seconds,
                "concurrent_towers": self.concurrent_towers,
                "text_length_buckets": {str(length): n for length, n in sorted(self.length_buckets.items())}}


# --- keys and paths --------------------------------------------------------------------------


def weights_digest(model: keras.Model) -> str:
    """sha256 over a model's weight values and shapes (not names: keras numbers those per process)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def tower_identity(tower: Tower) -> dict:
    """Everything the features depend on; `build` (how to rebuild it, with the whole vocabulary)
    is left out, its content is in the spec already."""
    spec = {k: v for k, v in tower.spec.items() if k != "build"}
    return {"format": FORMAT, "spec": spec, "dtype_policy": keras.config.dtype_policy().name,
            "weights_sha256": weights_digest(tower.model) if spec.get("weights") is None else None}


def folder_name(tower: Tower, identity: Optional[dict] = None, kind: Optional[str] = None) -> str:
    """`<kind>-<name>-<16 hex>`, e.g. `image-xception-3f2a...`: readable, and new for any change."""
    identity = identity or tower_identity(tower)
    key = files.json_digest(identity, length=16)
    name = re.sub(r"[^A-Za-z0-9_.]+", "_", os.path.basename(os.path.normpath(str(tower.spec["name"]))))
    return f"{kind or tower.spec['kind']}-{name}-{key}"


def cache_path(shard: str, folder: str) -> str:
    stem = os.path.basename(shard).removesuffix(schema.SHARD_SUFFIX)
    return os.path.join(os.path.dirname(shard), FOLDER, folder, stem + SUFFIX)


def shard_fingerprint(shard: str) -> str:
    """Size + sha256 of the first MiB: notices a rewritten shard without reading gigabytes."""
    with tf.io.gfile.GFile(shard, "rb") as f:
        head = f.read(_HEAD_BYTES)
    return f"{tf.io.gfile.stat(shard).length}:{hashlib.sha256(head).hexdigest()}"


# --- one file per shard and tower --------------------------------------------------------------


def _arrays_digest(arrays: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_shard(path: str, arrays: dict, shard: str, fingerprint: Optional[str] = None) -> None:
    """Writes one shard's arrays with the shard fingerprint and a checksum."""
    meta = {"format": FORMAT, "shard": os.path.basename(shard), "shard_fingerprint": fingerprint or shard_fingerprint(shard),
            "rows": {name: int(len(value)) for name, value in arrays.items()}, "sha256": _arrays_digest(arrays)}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    tf.io.gfile.makedirs(os.path.dirname(path))
    files.write_atomic(path, buffer.getvalue())


def load_shard(path: str, shard: str, fingerprint: Optional[str] = None) -> dict:
    """One shard's arrays, checked (whole file, checksum, row counts, same shard); else CacheMiss."""
    if not tf.io.gfile.exists(path):
        raise CacheMiss(path, "not computed yet")
    try:
        with tf.io.gfile.GFile(path, "rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            arrays = {name: stored[name] for name in stored.files if name != "meta"}
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError) as error:
        raise CacheMiss(path, f"unreadable ({type(error).__name__}: {error})") from None
    if meta.get("format") != FORMAT:
        raise CacheMiss(path, f"format {meta.get('format')}, expected {FORMAT}")
    if meta.get("rows") != {name: int(len(value)) for name,
                            value in arrays.items()} or meta.get("sha256") != _arrays_digest(arrays):
        raise CacheMiss(path, "checksum or length mismatch")
    if meta.get("shard_fingerprint") != (fingerprint or shard_fingerprint(shard)):
        raise CacheMiss(path, f"{shard} changed since its features were computed")
    return arrays


def _forward(tower: ImageTower):
    """The frozen image tower as one graph, traced once for all shards: images (0..255 at the
    tower's size) -> float32 features, in inference mode, with the weights as constants and every
    batch norm folded into its conv, depthwise ones included (towers/frozen_graph.py; measured
    in benchmarks/extraction_throughput.py)."""

    def features(images):
        return tf.cast(tower.model(images, training=False), tf.float32)

    return frozen_graph.inference_function(features, [tf.TensorSpec([None, *tower.image_size, 3], tf.float32)])


def _image_arrays(tower: ImageTower, forward, shard: str, items: list, batch_size: int, bar) -> dict:
    features = []
    for _, images in pipeline.image_dataset([shard], tower.image_size, tower.resize, batch_size):
        features.append(forward(images).numpy())
        bar.update(len(features[-1]))
    features = np.concatenate(features) if features else np.zeros((0, tower.feature_dim), np.float32)
    if len(features) != len(items):
        raise RuntimeError(f"{shard}: {len(features)} images decoded, {len(items)} records read")
    ids = pipeline.hash_image_ids(tf.constant([i for i, _ in items], tf.string)).numpy() if items else np.zeros(0, np.int64)
    return {"features": features, "image_ids": ids}


def _forward_views(tower: ImageTower, augmentation: ViewAugmentation, shard: str, batch_size: int):
    """The K views [K, H, W, 3] of each image of a shard, in shard order, batched by image for the tower."""
    size, resize = tower.image_size, tower.resize

    def views(example):
        image_hash = pipeline.hash_image_ids(example[schema.IMAGE_ID])
        return augmentation.views_of(tf.io.decode_jpeg(example[schema.IMAGE], channels=3), image_hash, size, resize)

    config = pipeline.PipelineConfig(shuffle=False, deterministic=True)
    images_per_batch = max(1, batch_size // augmentation.views)
    return pipeline.read_examples([shard], config).map(views, num_parallel_calls=pipeline.AUTOTUNE).batch(
        images_per_batch).prefetch(pipeline.AUTOTUNE)


def _view_arrays(tower: ImageTower, forward, augmentation: ViewAugmentation, shard: str, items: list, batch_size: int,
                 bar) -> dict:
    k, features = augmentation.views, []
    for views in _forward_views(tower, augmentation, shard, batch_size):
        images = int(views.shape[0])
        features.append(forward(tf.reshape(views, [images * k, *views.shape[2:]])).numpy().reshape(images, k, -1))
        bar.update(images * k)
    features = np.concatenate(features) if features else np.zeros((0, k, tower.feature_dim), np.float32)
    if len(features) != len(items):
        raise RuntimeError(f"{shard}: views of {len(features)} images made, {len(items)} records read")
    return {"views": features}


def _text_arrays(text: TextFeatures, items: list, batch_size: int, bar, counts: dict) -> dict:
    captions = [c for _, caps in items for c in caps]
    return {"features": text(captions, batch_size, bar, counts), "counts": np.array([len(caps) for _, caps in items], np.int64),
            "caption_keys": caption_keys.item_keys(items)}


# --- all shards ---------------------------------------------------------------------------------


class _SharedBar:
    """One progress bar updated by both towers' threads, naming what each is on."""

    def __init__(self, bar, lock: threading.Lock):
        self.bar, self.lock, self.current = bar, lock, {}

    def update(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)

    def doing(self, kind: str, shard: str) -> None:
        with self.lock:
            self.current["text" if kind == "text" else "image"] = f"{kind} {shard}"
            self.bar.set_postfix_str(", ".join(self.current[k] for k in sorted(self.current)))


def _run_beside(background, foreground) -> None:
    """`background(stop)` in a second thread while `foreground(failed)` runs here; the first error
    of either is raised once both are done. An interruption here (Ctrl-C) sets `stop`, which the
    background checks between files, and is raised at once (the thread is a daemon)."""
    stop, failed, errors = threading.Event(), threading.Event(), []

    def run() -> None:
        try:
            background(stop)
        except BaseException as error:  # noqa: BLE001  (raised again in the calling thread)
            errors.append(error)
            failed.set()

    thread = threading.Thread(target=run, name="text tower features", daemon=True)
    thread.start()
    try:
        foreground(failed)
    except BaseException:
        stop.set()
        raise
    thread.join()
    if errors:
        raise errors[0]


class FeatureCache:
    """The feature cache of one image tower and one text tower (frozen) over any shards.

    `extract(files)` makes sure every shard has valid features for both towers, computing only
    what is missing or broken; `load(files)` returns them. Keys are computed once here (hashing
    random weights takes a second for BERT base). Captions run by length bucket where that is
    exact (`TextFeatures`; `length_buckets=False`: all at the full length); keys and features
    are the same either way. `concurrent_towers`: the text tower runs in a second thread beside
    the image tower (same features; False: one after the other).
    """

    def __init__(self, image_tower: ImageTower, text_tower: TextTower, length_buckets: bool = True,
                 augmentation: Optional[ViewAugmentation] = None, concurrent_towers: bool = True):
        self.towers = {"image": image_tower, "text": text_tower}
        self.length_buckets = length_buckets
        self.concurrent_towers = concurrent_towers
        self.augmentation = augmentation if augmentation is not None and augmentation.views > 0 else None
        self.identities = {kind: tower_identity(t) for kind, t in self.towers.items()}
        self.folders = {kind: folder_name(t, self.identities[kind]) for kind, t in self.towers.items()}
        if self.augmentation is not None:
            self.identities["views"] = {**self.identities["image"], "augmentation": self.augmentation.spec()}
            self.folders["views"] = folder_name(image_tower, self.identities["views"], kind="views")
        self._checked: dict = {}  # (shard, kind) -> arrays validated by extract(), handed to load()
        self._forwards: dict = {}  # "image" / "text" -> traced tower, built on first use

    def paths(self, shard: str, views: bool = False) -> dict:
        """The cache files of a shard: image and text, and its views where `views` (and an augmentation)."""
        return {kind: cache_path(shard, folder) for kind, folder in self.folders.items() if kind != "views" or views}

    def extract(self, files: Sequence[str], batch_size: int = 64, progress: bool = True,
                view_files: Sequence[str] = ()) -> CacheReport:
        """Computes the features missing for `files`, and the augmented views of `view_files` (the
        training shards; needs an augmentation); whole files from earlier runs are kept."""
        started = time.perf_counter()
        view_files = set(view_files) if self.augmentation is not None else set()
        files = list(dict.fromkeys([*files, *sorted(view_files)]))
        folders = sorted({os.path.dirname(p) for shard in files for p in self.paths(shard, shard in view_files).values()})
        report = CacheReport(folders=folders)
        if self.augmentation is not None:
            report.computed_rows["views"], report.compute_seconds["views"] = 0, 0.0
        try:
            for folder in folders:
                self._start_folder(folder)
        except (OSError, tf.errors.OpError) as error:  # e.g. shards on a read-only share
            logger.warning("feature cache: cannot write to %s (%s); the features are kept in memory for this run only",
                           folder, str(error).splitlines()[0] if str(error) else type(error).__name__)
            report.stored = False
        todo, fingerprints = [], {}
        for shard in files:
            fingerprints[shard] = shard_fingerprint(shard)
            for kind, path in self.paths(shard, shard in view_files).items():
                try:
                    self._checked[shard, kind] = load_shard(path, shard, fingerprints[shard])
                    report.reused += 1
                except CacheMiss as miss:
                    todo.append((shard, kind))
                    if tf.io.gfile.exists(path):
                        logger.warning("feature cache: recomputing %s", miss)
                        report.rebuilt[path] = miss.reason
        items = {shard: pipeline.image_caption_lists([shard]) for shard in dict.fromkeys(s for s, _ in todo)}
        sizes = {"image": lambda s: len(items[s]), "text": lambda s: sum(len(c) for _, c in items[s]),
                 "views": lambda s: len(items[s]) * self.augmentation.views}
        total = sum(sizes[kind](s) for s, kind in todo)
        lock = threading.Lock()  # the report, the bar and _checked are shared by the two towers' threads

        def compute(shard: str, kind: str, bar: _SharedBar) -> None:
            tower = self.towers.get(kind, self.towers["image"])
            bar.doing(kind, os.path.basename(shard))
            computing = time.perf_counter()
            if kind == "image":
                arrays = _image_arrays(tower, self._traced("image"), shard, items[shard], batch_size, bar)
            elif kind == "views":
                arrays = _view_arrays(tower, self._traced("image"), self.augmentation, shard, items[shard], batch_size, bar)
            else:
                counts: dict = {}
                arrays = _text_arrays(self._traced("text"), items[shard], batch_size, bar, counts)
            seconds = time.perf_counter() - computing
            if report.stored:
                save_shard(self.paths(shard, views=True)[kind], arrays, shard, fingerprints[shard])
            with lock:
                if kind == "text":
                    for length, n in counts.items():
                        report.length_buckets[length] = report.length_buckets.get(length, 0) + n
                report.compute_seconds[kind] += seconds
                report.computed_rows[kind] += sizes[kind](shard)
                self._checked[shard, kind] = arrays
                report.computed += 1

        def compute_all(jobs: list, halt: threading.Event) -> None:
            for shard, kind in jobs:
                if halt.is_set():
                    return
                compute(shard, kind, bar)

        text_jobs = [job for job in todo if job[1] == "text"]
        image_jobs = [job for job in todo if job[1] != "text"]
        report.concurrent_towers = bool(self.concurrent_towers and text_jobs and image_jobs)
        with tqdm(total=total, unit="item", desc="caching tower features", disable=not progress) as progress_bar:
            bar = _SharedBar(progress_bar, lock)
            if report.concurrent_towers:
                _run_beside(lambda stop: compute_all(text_jobs, stop), lambda failed: compute_all(image_jobs, failed))
            else:
                compute_all(todo, threading.Event())
        report.seconds = time.perf_counter() - started
        logger.info("feature cache: %d files computed, %d reused in %.1f s (%s)", report.computed, report.reused,
                    report.seconds, ", ".join(folders))
        return report

    def _traced(self, tower: str):
        """The traced image or text tower, built in the thread that first needs it: freezing and
        folding the image tower (2 s for EfficientNet-Lite0) then runs while the captions are computed."""
        if tower not in self._forwards:  # each tower is only ever built by one thread
            self._forwards[tower] = (TextFeatures(self.towers["text"], self.length_buckets) if tower == "text"
                                     else _forward(self.towers["image"]))
        return self._forwards[tower]

    def load(self, files: Sequence[str], views: bool = False) -> CachedFeatures:
        """The features of `files` (extracted before), concatenated in shard order; with `views`
        (and an augmentation) their augmented views too, extracted for them as `view_files`."""
        shards = []
        views = views and self.augmentation is not None
        for shard in files:
            fingerprint = None
            arrays = {}
            for kind, path in self.paths(shard, views).items():
                if (shard, kind) in self._checked:
                    arrays[kind] = self._checked.pop((shard, kind))
                else:
                    fingerprint = fingerprint or shard_fingerprint(shard)
                    try:
                        arrays[kind] = load_shard(path, shard, fingerprint)
                    except CacheMiss as miss:
                        raise PathNotFoundError(f"no usable cached features: {miss}; run FeatureCache.extract first") from None
            if len(arrays["image"]["image_ids"]) != len(arrays["text"]["counts"]) or (
                    views and len(arrays["views"]["views"]) != len(arrays["text"]["counts"])):
                raise InvalidArgumentError(f"{shard}: image and text caches disagree on the number of images; delete "
                                 f"{os.path.dirname(os.path.dirname(self.paths(shard)['image']))} and extract again")
            if "caption_keys" not in arrays["text"]:  # written before caption keys were stored
                arrays["text"] = {**arrays["text"], "caption_keys": caption_keys.item_keys(pipeline.image_caption_lists([shard]))}
            shards.append(arrays)
        if not shards:
            raise InvalidArgumentError("no shard files to load features for")
        return CachedFeatures(
            image_features=np.concatenate([s["image"]["features"] for s in shards]),
            image_ids=np.concatenate([s["image"]["image_ids"] for s in shards]),
            text_features=np.concatenate([s["text"]["features"] for s in shards]),
            caption_counts=np.concatenate([s["text"]["counts"] for s in shards]),
            shard_sizes=[len(s["text"]["counts"]) for s in shards],
            caption_keys=np.concatenate([s["text"]["caption_keys"] for s in shards]),
            image_views=np.concatenate([s["views"]["views"] for s in shards]) if views else None,
        )

    def _start_folder(self, folder: str) -> None:
        """Creates the folder with its tower.json, and deletes temporaries of interrupted runs."""
        tf.io.gfile.makedirs(folder)
        for name in tf.io.gfile.listdir(folder):
            path = os.path.join(folder, name)
            if files.TMP_MARK in name and time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9 > _STALE_TMP_SECONDS:
                tf.io.gfile.remove(path)
        kind = next(k for k, f in self.folders.items() if os.path.basename(folder) == f)
        tower_json = os.path.join(folder, "tower.json")
        if not tf.io.gfile.exists(tower_json):
            files.write_json(tower_json, self.identities[kind])


# --- pairs ---------------------------------------------------------------------------------------


def read_order(shard_sizes: Sequence[int]) -> np.ndarray:
    """Image indices in the order `pipeline.read_examples` yields unshuffled shards (one record of
    each of up to `pipeline.READ_CYCLE` shards in turn), so validation batches match those of the uncached pipeline."""
    starts = tf.constant(np.cumsum([0, *shard_sizes]), tf.int64)
    ds = tf.data.Dataset.range(len(shard_sizes)).interleave(
        lambda i: tf.data.Dataset.range(starts[i], starts[i + 1]), cycle_length=pipeline.read_cycle(len(shard_sizes)))
    return np.concatenate([np.zeros(0, np.int64), *ds.batch(65536).as_numpy_iterator()])


def pair_dataset(features: CachedFeatures, config: pipeline.PipelineConfig) -> tf.data.Dataset:
    """Batches of {"image_features", "text_features", "image_ids", "caption_keys"} ready for
    `DualEncoder.fit` (no caption_keys without `config.mask_duplicate_captions`).

    As `pipeline.pair_dataset`: each image gives min(K, its captions) pairs per epoch; with
    `shuffle` the captions are sampled anew each epoch (unless `deterministic`) and all pairs are
    shuffled (a full shuffle, not a buffer); without it pairs come in read order, first K captions.
    Each epoch's randomness comes from `Dataset.random(seed)`, so a seeded run repeats exactly.
    With `features.image_views` (K augmented views per image) and `shuffle`, each epoch also draws
    one of the image's K + 1 rows (plain or a view) per image: every pair of that image in the
    epoch shows the same view.
    """
    counts = np.asarray(features.caption_counts, np.int64)
    owner = features.caption_images()  # caption -> image row
    rank = np.arange(len(owner)) - (np.cumsum(counts) - counts)[owner]  # position among its image's captions
    keep = rank < config.captions_per_image
    first_k = np.flatnonzero(keep)
    if not len(first_k):
        raise InvalidArgumentError("the cached shards hold no captions")
    views = features.image_views is not None and config.shuffle
    image_rows = features.image_features  # with views: [N * (K + 1), D], image i's rows at i * (K + 1) + v
    if views:
        image_rows = np.concatenate([features.image_features[:, None], features.image_views], axis=1)
        image_rows = image_rows.reshape(-1, features.image_features.shape[-1])
        rows_per_image = features.image_views.shape[1] + 1
    if not config.shuffle:
        position = np.empty(len(counts), np.int64)
        position[read_order(features.shard_sizes)] = np.arange(len(counts))
        ds = tf.data.Dataset.from_tensor_slices(first_k[np.argsort(position[owner[first_k]], kind="stable")])
    else:
        sample = not config.deterministic
        owner_t, keep_t, first_k_t = tf.constant(owner), tf.constant(keep), tf.constant(first_k)

        def epoch(seed):
            seeds = tf.random.experimental.stateless_split(tf.stack([seed, tf.constant(0, tf.int64)]), 2)
            captions = first_k_t
            if sample:  # random order within each image (stable sort by image after a random sort)
                by_random = tf.argsort(tf.random.stateless_uniform(tf.shape(owner_t), seeds[0]), stable=True)
                grouped = tf.gather(by_random, tf.argsort(tf.gather(owner_t, by_random), stable=True))
                captions = tf.boolean_mask(grouped, keep_t)
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(captions), seeds[1]))
            captions = tf.gather(captions, order)
            if not views:
                return tf.data.Dataset.from_tensor_slices(captions)
            view_seed = tf.random.experimental.stateless_fold_in(seeds[1], 1)
            view = tf.random.stateless_uniform([len(counts)], view_seed, 0, rows_per_image, tf.int64)
            images = tf.gather(owner_t, captions)
            return tf.data.Dataset.from_tensor_slices((captions, images * rows_per_image + tf.gather(view, images)))

        ds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True).take(1).flat_map(epoch)
    if config.repeat:
        ds = ds.repeat()
    image_features, text_features = tf.constant(image_rows), tf.constant(features.text_features)
    image_ids, owner_t = tf.constant(features.image_ids, tf.int64), tf.constant(owner)
    keys = None  # features made by hand may have no caption keys: the same-image mask only
    if config.mask_duplicate_captions and features.caption_keys is not None:
        keys = tf.constant(features.caption_keys, tf.int64)

    def lookup(captions, rows=None):
        images = tf.gather(owner_t, captions)
        batch = {"image_features": tf.gather(image_features, images if rows is None else rows),
                 "text_features": tf.gather(text_features, captions),
                 "image_ids": tf.gather(image_ids, images)}
        return batch if keys is None else {**batch, "caption_keys": tf.gather(keys, captions)}

    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    # Under MultiWorkerMirroredStrategy every worker builds the same seeded epoch and keeps its part
    # of each batch (there are no files to split by).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotuning: its model thread wakes after 10, 30, 70, ... 5110, 10230 ms, and deleting the
    # iterator (keras makes one per epoch) waited for that wake-up: a 5-7 s epoch took 10.25 s
    # about one time in three (benchmarks/train_throughput.py). Gathering rows needs no tuning.
    options.autotune.enabled = False
    ds = ds.with_options(options)
    if not config.repeat:  # known length: progress bars, and no "ran out of data" warning
        batches = len(first_k) // config.batch_size if config.drop_remainder else -(-len(first_k) // config.batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.map(lookup, num_parallel_calls=LOOKUP_THREADS, deterministic=True).prefetch(PREFETCH_BATCHES)

"""Training: towers + model under a tf.distribute strategy, callbacks, resume, results.

`train()` is the library entry point behind `train.py`; notebooks call it the same way. An
output folder holds everything about a run: `backup/` (resume state), `checkpoints/`,
`log.csv`, `tensorboard/`, `curves.png`, `saved_model/` and `results.json`. With both towers frozen,
their features are computed once into `<shard dir>/features/` (`training/feature_cache.py`) and the
epochs train the heads on them; evaluation and export still use the whole model.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from dual_encoder import files, towers
from dual_encoder.config import LOGIT_SCALE_MAX, RunConfig
from dual_encoder.data import caption_keys, pipeline
from dual_encoder.data.augment import ViewAugmentation
from dual_encoder.errors import DualEncoderError, InvalidArgumentError
from dual_encoder.model import class_prior
from dual_encoder.model.dual_encoder import SIGLIP_BIAS_INIT, DualEncoder
from dual_encoder.training import feature_cache, wise_ft
from dual_encoder.training.callbacks import BEST_WEIGHTS, EpochTimer, make_callbacks, restore_backup
from dual_encoder.training.checkpoints import (
    MARGIN_BYTES,
    DamagedCheckpointError,
    load_weights,
    require_free_space,
    weights_bytes,
)
from dual_encoder.training.distribution import make_strategy, shard_across_workers, worker_output_dir
from dual_encoder.training.optimizer import make_optimizer
from dual_encoder.training.run_folder import check_same_config, data_identity, prepare_output_dir, read_log, read_manifests

logger = logging.getLogger(__name__)

SEQUENCE_PERCENTILE = 99
PROBE_SEQUENCE_LENGTH = 128
CAPTION_SAMPLE = 5000


class TrainingDiverged(DualEncoderError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def choose_sequence_length(preprocessor, captions: Sequence[str], percentile: int = SEQUENCE_PERCENTILE) -> tuple[int, dict]:
    """A sequence length that fits the captions: the percentile of token counts, rounded up to 8.

    Captions are short while presets default to 256-512 tokens; text encoding cost grows with
    length, so this is the largest single speed-up for text towers.
    """
    counts = []
    for start in range(0, len(captions), 512):
        mask = preprocessor(tf.constant(list(captions[start : start + 512])))["padding_mask"]
        counts.append(tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1).numpy())
    counts = np.concatenate(counts)
    length = int(max(8, math.ceil(np.percentile(counts, percentile) / 8) * 8))
    stats = {"percentile": percentile, "chosen": length, "max_tokens": int(counts.max()), "mean_tokens": float(counts.mean()),
             "truncated_fraction": float(np.mean(counts > length))}
    return length, stats


def build_towers(config: RunConfig, captions: Sequence[str]):
    """Image and text towers for the config; the text length comes from the data unless given
    (with --init: both towers, and the sequence length, are the checkpoint's)."""
    m = config.model
    if config.finetune.init:
        if m.image_feature_stages or m.text_feature_layers:
            raise InvalidArgumentError("--image-feature-stages and --text-feature-layers are for towers built by name; "
                                       "the towers of --init are the checkpoint's own: pass 0 (the default)")
        return _init_towers(config)
    weights = m.image_weights or ("imagenet" if m.pretrained else None)
    image_tower = towers.build_image_tower(m.image_encoder, weights=weights, image_size=m.image_size,
                                           feature_stages=m.image_feature_stages)
    vocabulary = None
    if m.text_encoder == "tiny":
        vocabulary = towers.build_vocabulary(captions, size=m.vocabulary_size)
    stats = {"chosen": m.sequence_length, "source": "flag"}
    sequence_length = m.sequence_length
    if sequence_length is None:
        probe = towers.build_text_tower(m.text_encoder, pretrained=False, sequence_length=PROBE_SEQUENCE_LENGTH,
                                        vocabulary=vocabulary)
        sequence_length, stats = choose_sequence_length(probe.preprocessor, captions)
        sequence_length = min(sequence_length, PROBE_SEQUENCE_LENGTH)
    text_tower = towers.build_text_tower(m.text_encoder, pretrained=m.pretrained, sequence_length=sequence_length,
                                         vocabulary=vocabulary, feature_layers=m.text_feature_layers)
    towers.freeze(image_tower.model, m.train_image_tower, m.trainable_layers)
    towers.freeze(text_tower.model, m.train_text_tower, m.trainable_layers)
    return image_tower, text_tower, stats


def _init_towers(config: RunConfig):
    """The two towers of the --init checkpoint, locked as the flags say (`--trainable-layers N`:
    the last N transformer blocks of each trained tower)."""
    m = config.model
    pair = towers.load_preset_pair(config.finetune.init, pretrained=m.pretrained, sequence_length=m.sequence_length)
    for tower, trained in ((pair.image, m.train_image_tower), (pair.text, m.train_text_tower)):
        towers.freeze(tower.model, trained, m.trainable_layers, blocks=tower.blocks)
    stats = {"chosen": pair.text.sequence_length, "source": "flag" if m.sequence_length else "checkpoint"}
    return pair.image, pair.text, stats


def _init_model(config: RunConfig, image_tower, text_tower) -> DualEncoder:
    """The dual encoder that is the --init checkpoint: its projections as linear heads, its logit
    scale (clamped at its own value where that exceeds CLIP's 100) and SigLIP's bias."""
    m, checkpoint = config.model, image_tower.spec["init"]
    image_head, text_head = image_tower.projection, text_tower.projection
    scale = checkpoint["logit_scale"]
    bias = checkpoint["logit_bias"]
    model = DualEncoder(
        image_tower.model, text_tower.model, text_tower.preprocessor, image_size=image_tower.image_size,
        resize=image_tower.resize, projection_dim=int(text_head.kernel.shape[-1]), head="linear", dropout=0.0,
        logit_scale=min(max(scale, 0.0), max(LOGIT_SCALE_MAX, scale)), learn_temperature=m.learn_temperature,
        loss=m.loss or checkpoint["loss"], image_head_bias=image_head.bias is not None,
        text_head_bias=text_head.bias is not None, logit_bias=SIGLIP_BIAS_INIT if bias is None else bias,
        logit_scale_max=max(LOGIT_SCALE_MAX, scale), grad_cache_chunk=config.finetune.grad_cache_chunk,
    )
    for head, weights in ((model.image_head, image_head), (model.text_head, text_head)):
        head.project.set_weights([weights.kernel] + ([weights.bias] if weights.bias is not None else []))
    return model


def build_model(config: RunConfig, image_tower, text_tower) -> DualEncoder:
    m = config.model
    if config.finetune.init:
        return _init_model(config, image_tower, text_tower)
    prior = None
    if m.class_prior:
        if not m.pretrained:
            raise class_prior.ClassPriorUnavailable("--class-prior needs the pretrained image classifier; drop "
                                                    "--no-pretrained or pass --no-class-prior")
        prior = class_prior.build_class_prior(m.image_encoder, image_tower.feature_dim, text_tower, m.class_prior_top_k,
                                              pooled_dim=image_tower.pooled_dim)
    return DualEncoder(
        image_tower.model, text_tower.model, text_tower.preprocessor,
        image_size=image_tower.image_size, resize=image_tower.resize, projection_dim=m.projection_dim,
        head=m.head, dropout=m.dropout, feature_dropout=m.feature_dropout, logit_scale=m.logit_scale,
        learn_temperature=m.learn_temperature,
        loss=m.loss or "infonce", class_prior=prior, grad_cache_chunk=config.finetune.grad_cache_chunk,
    )


def steps_per_epoch(config: RunConfig, manifests: dict, caption_lists: list) -> int:
    """Batches in an epoch, for the learning-rate schedule: pairs are min(captions, K) per image,
    counted exactly when every training image was read for the caption sample, else from the
    shard manifests (images x K, at most their captions); an estimate for skipped damaged shards."""
    k, batch = config.data.captions_per_image, config.train.batch_size
    if len(caption_lists) < CAPTION_SAMPLE:
        pairs = sum(min(len(caps), k) for _, caps in caption_lists)
    else:
        splits = [(m or {}).get("splits", {}).get("train", {}) for m in manifests.values()]
        pairs = sum(min(s.get("captions", 0), s.get("images", 0) * k) for s in splits)
        pairs = pairs or CAPTION_SAMPLE * k
    return max(1, math.ceil(pairs / batch))


def duplicate_captions(config: RunConfig, items: Sequence) -> dict:
    """caption_keys.duplicate_report of the training captions, logged: how many repeat on another image."""
    images = [image for image, caps in items for _ in caps]
    return _log_duplicates(config, caption_keys.duplicate_report(np.array(images), caption_keys.item_keys(items)))


def _log_duplicates(config: RunConfig, report: dict) -> dict:
    report = {**report, "masked": config.data.mask_duplicate_captions}
    logger.info("%d of %d training captions are written word for word on another image too (%d distinct captions, "
                "%d images): %s", report["captions_shared_with_another_image"], report["captions"],
                report["distinct_shared_captions"], report["images_with_a_shared_caption"],
                "not negatives of each other" if report["masked"] else "kept as negatives (--no-mask-duplicate-captions)")
    return report


def embed_split(model: DualEncoder, files: Sequence[str], batch_size: int = 64):
    """Image and caption embeddings of every image in some shards, for retrieval metrics."""
    items = pipeline.image_caption_lists(files)
    image_embeddings = np.concatenate(
        [model.embed_images({"images": images}).numpy() for _, images in pipeline.image_dataset(files, model.image_size,
                                                                                                model.resize, batch_size)]
    )
    captions = [c for _, caps in items for c in caps]
    owner = np.concatenate([np.full(len(caps), i) for i, (_, caps) in enumerate(items)])
    text_embeddings = np.concatenate(
        [model.encode_texts(tf.constant(captions[s : s + batch_size])).numpy() for s in range(0, len(captions), batch_size)]
    )
    return image_embeddings, text_embeddings, owner


def embed_cached_split(model: DualEncoder, features: feature_cache.CachedFeatures, batch_size: int = 4096):
    """`embed_split` from the towers' cached features: only the heads run. With frozen towers the
    features are the ones the towers would compute, and the split takes seconds instead of the
    towers' minutes (99 s of a 177 s one-epoch `lit` run on 1,218 Flickr8k photos)."""

    def embed(method, key, rows):
        return np.concatenate([method({key: tf.constant(rows[s : s + batch_size])}).numpy()
                               for s in range(0, len(rows), batch_size)])

    order = feature_cache.read_order(features.shard_sizes)  # the rows as `embed_split` reads the shards
    starts = np.concatenate([[0], np.cumsum(features.caption_counts)])
    caption_rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in order])
    owner = np.repeat(np.arange(len(order)), features.caption_counts[order])
    return (embed(model.embed_images, "image_features", features.image_features[order]),
            embed(model.embed_texts, "text_features", features.text_features[caption_rows]), owner)


def train(config: RunConfig, shard_dirs: Sequence[str], output_dir, verbose="auto", export: bool = True) -> dict:
    """Trains on shards written by `python -m dual_encoder.data`, resuming if `output_dir` has a
    backup, then exports and writes `results.json`. Returns the results dict.

    `shard_dirs`: one folder or several (read as one dataset). `verbose`: Keras' fit verbosity
    ("auto", 0 silent, 1 progress bar, 2 one line per epoch); 0 also hides the feature-extraction
    progress bar. `export`: write the SavedModel too. Keras' global dtype policy is set from
    `config.train.mixed_precision` for the call and restored afterwards.
    """
    _check_arguments(config, shard_dirs, output_dir)
    config.validate()  # fields assigned past their checks, and the rules between fields
    if isinstance(shard_dirs, (str, os.PathLike)):
        shard_dirs = [shard_dirs]
    shard_dirs = [str(d) for d in shard_dirs]
    if config.train.deterministic:  # process-wide, as keras.utils.set_random_seed below is
        tf.config.experimental.enable_op_determinism()
    policy = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(config.train.mixed_precision or "float32")
    try:
        return _train(config, shard_dirs, output_dir, verbose, export)
    finally:  # a later call in the same process (a notebook) must not inherit this run's policy
        keras.mixed_precision.set_global_policy(policy)


def _build_towers_for_flags(config: RunConfig, captions):
    """build_towers, with Keras' and keras-hub's own refusals (an image size a tower cannot take,
    a weights file of another architecture) said in the flags' words instead of a traceback."""
    try:
        return build_towers(config, captions)
    except ValueError as error:
        if isinstance(error, DualEncoderError):
            raise
        m = config.model
        cause = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        if config.finetune.init:
            raise InvalidArgumentError(f"the towers cannot be built from --init {config.finetune.init}: {cause}") from None
        raise InvalidArgumentError(f"the towers cannot be built with --image-encoder {m.image_encoder} --image-size "
                                   f"{m.image_size} --image-weights {m.image_weights} --text-encoder {m.text_encoder}: "
                                   f"{cause}") from None


def _check_arguments(config, shard_dirs, output_dir) -> None:
    """The public entry point says what it expected instead of failing deep inside."""
    if not isinstance(config, RunConfig):
        raise InvalidArgumentError(f"config must be a RunConfig (e.g. dual_encoder.get_preset('sample')), not "
                                   f"{type(config).__name__}")
    paths = [shard_dirs] if isinstance(shard_dirs, (str, os.PathLike)) else shard_dirs
    if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise InvalidArgumentError(f"shard_dirs must be a folder or a list of folders written by python -m "
                                   f"dual_encoder.data, not {shard_dirs!r}")
    if not isinstance(output_dir, (str, os.PathLike)):
        raise InvalidArgumentError(f"output_dir must be a folder path, not {type(output_dir).__name__}")


def _save_model_file(model, path: Path) -> None:
    """model.keras, whole or not at all, after checking there is room for it."""
    require_free_space(path.parent, weights_bytes(model) + MARGIN_BYTES, path.name)
    tmp = Path(files.temporary_name(path, suffix=path.suffix))  # keras wants the .keras suffix
    try:
        model.save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _export(model, path: Path) -> None:
    """The SavedModel, written beside its target and swapped in whole (a rerun replaces it)."""
    from dual_encoder.export import export_saved_model

    require_free_space(path.parent, weights_bytes(model) + MARGIN_BYTES, path.name)
    with files.writing_folder(path) as tmp:
        export_saved_model(model, tmp)


def _load_best_weights(model, output_dir: Path) -> None:
    """The best checkpoint into `model`; a damaged one is reported and the weights training ended
    with are kept (they are also in checkpoints/last.weights.h5)."""
    best = output_dir.joinpath(*BEST_WEIGHTS)
    if not best.exists():
        return
    try:
        load_weights(model, best)
    except DamagedCheckpointError as damaged:
        logger.warning("%s: using the weights of the last epoch instead (delete it, or train into a new --output-dir, "
                       "to get a best checkpoint again)", damaged)


def _train(config: RunConfig, shard_dirs: list[str], output_dir, verbose, export: bool) -> dict:
    from dual_encoder.data.integrity import intact_shards
    from dual_encoder.data.tfrecords import NoShardsError, list_shards
    from dual_encoder.evaluation import plots, retrieval

    started = time.perf_counter()
    strategy = make_strategy(config.train.strategy)  # first: MultiWorkerMirroredStrategy must precede any TF op
    if config.train.jit_compile and strategy.num_replicas_in_sync > 1:
        raise InvalidArgumentError(f"--jit-compile needs a single replica ({strategy.num_replicas_in_sync} here): Keras "
                                   "compiles the whole distributed step, replicas and collectives included, which XLA cannot")
    output_dir = prepare_output_dir(worker_output_dir(Path(output_dir), strategy))
    manifests = read_manifests(shard_dirs)
    check_same_config(output_dir, config.to_dict(), data_identity(manifests))
    keras.utils.set_random_seed(config.train.seed)

    train_files = list_shards(shard_dirs, "train")
    try:
        val_files = list_shards(shard_dirs, "val")
    except (FileNotFoundError, ValueError):
        val_files = []
        logger.warning("no validation shards in %s: monitoring the training loss instead", shard_dirs)
    intact = set(intact_shards(train_files + val_files, config.data.skip_damaged_shards))
    train_files, val_files = [f for f in train_files if f in intact], [f for f in val_files if f in intact]
    if not train_files:
        raise NoShardsError(f"no intact training shard left in {', '.join(shard_dirs)}")
    captions_read = pipeline.image_caption_lists(train_files, max_images=CAPTION_SAMPLE)
    captions = [c for _, caps in captions_read for c in caps]
    use_cache = config.data.feature_cache and not (config.model.train_image_tower or config.model.train_text_tower)
    if config.data.augment_views and not use_cache:
        raise InvalidArgumentError("--augment-views works on cached features: it needs both towers frozen and the feature "
                                   "cache on (drop --no-feature-cache / the tower training flags, or --augment-views)")
    # On cached features the step holds only the heads, whose many small ops XLA fuses: measured 7.2 s
    # (12.6 CPU s) instead of 8.7 s (14.8 CPU s) per 90,000-pair epoch on 2 cores (benchmarks/train_throughput.py).
    # GradCache's chunk loop has shapes XLA cannot compile (validate() refuses --jit-compile with it).
    jit_compile = config.train.jit_compile or (use_cache and strategy.num_replicas_in_sync == 1
                                               and not config.finetune.grad_cache_chunk)
    steps = steps_per_epoch(config, manifests, captions_read)

    with strategy.scope():
        image_tower, text_tower, sequence_stats = _build_towers_for_flags(config, captions)
        model = build_model(config, image_tower, text_tower)
        model.compile(optimizer=make_optimizer(config, model, steps), jit_compile=jit_compile)
    # The weights before any step (the --init checkpoint itself), for the WiSE-FT mix at the end.
    pretrained = wise_ft.weights_of(model) if config.finetune.wise_ft is not None else None

    cache, cache_results = None, {"used": False, "reason": "--no-feature-cache" if not config.data.feature_cache else "a tower "
        "is trained"}
    if use_cache:
        augmentation = ViewAugmentation(views=config.data.augment_views, min_scale=config.data.augment_min_scale)
        # frozen towers: features once, heads only
        cache = feature_cache.FeatureCache(image_tower, text_tower, augmentation=augmentation)
        report = cache.extract(train_files + val_files, progress=verbose != 0, view_files=train_files)
        cache_results = {**report.as_dict(), "jit_compile": jit_compile, "augmentation": augmentation.spec()}

    duplicates, val_features = {}, []  # the validation features fit reads, kept for the retrieval report

    def pairs(files, training):
        pipeline_config = pipeline.PipelineConfig(
            batch_size=config.train.batch_size, captions_per_image=config.data.captions_per_image,
            shuffle=training, deterministic=not training, shuffle_buffer=config.data.shuffle_buffer,
            seed=config.train.seed, cache=config.data.cache, mask_duplicate_captions=config.data.mask_duplicate_captions,
        )
        if cache is not None:
            features = cache.load(files, views=training)
            if not training:
                val_features.append(features)
            if training:
                duplicates.update(_log_duplicates(config, caption_keys.duplicate_report(
                    features.image_ids[features.caption_images()], features.caption_keys)))
            return feature_cache.pair_dataset(features, pipeline_config)
        if training:  # every training caption, read without decoding the images
            complete = len(captions_read) < CAPTION_SAMPLE
            duplicates.update(duplicate_captions(config, captions_read if complete else pipeline.image_caption_lists(files)))
        dataset = pipeline.pair_dataset(files, image_tower.image_size, text_tower.preprocessor, pipeline_config,
                                        image_tower.resize)
        return shard_across_workers(dataset, len(files), strategy)

    callbacks, guard = make_callbacks(config, output_dir, has_validation=bool(val_files))
    initial_epoch = restore_backup(model, output_dir)
    timer = EpochTimer()
    fit_started = time.perf_counter()
    with warnings.catch_warnings():
        # Keras warns when a dataset of unknown length ends, as ours do once per epoch by design.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(
            pairs(train_files, True), validation_data=pairs(val_files, False) if val_files else None,
            epochs=config.train.epochs, initial_epoch=initial_epoch, callbacks=callbacks + [timer], verbose=verbose,
            shuffle=False,  # the datasets shuffle themselves; Keras' own flag would only warn that it is ignored
        )
    fit_seconds = time.perf_counter() - fit_started
    if guard.where:
        epoch, batch, value = guard.where
        raise TrainingDiverged(
            f"the loss became {value} at epoch {epoch}, batch {batch}; training stopped. The last good "
            f"weights are in {output_dir / 'checkpoints'}. Try a lower --learning-rate or a fixed temperature."
        )
    _load_best_weights(model, output_dir)

    history = read_log(output_dir / "log.csv")
    plots.save_training_curves(history, output_dir / "curves.png")
    _save_model_file(model, output_dir / "model.keras")  # the fine-tuned weights, also under --wise-ft
    mixed = None
    if pretrained is not None:  # from here on the model is the exported mix
        mixed = wise_ft.apply_mix(model, pretrained, wise_ft.weights_of(model), config.finetune.wise_ft)
    eval_files = val_files or train_files
    if cache is not None and mixed is None:  # a WiSE-FT mix re-weights the towers, so it runs them
        image_emb, text_emb, owner = embed_cached_split(model, val_features[0] if val_features else cache.load(eval_files))
    else:
        image_emb, text_emb, owner = embed_split(model, eval_files)
    evaluation = {"split": "val" if val_files else "train", **retrieval.retrieval_report(image_emb, text_emb, owner)}

    export_seconds = None
    if export:
        export_started = time.perf_counter()
        _export(model, output_dir / "saved_model")
        export_seconds = time.perf_counter() - export_started

    results = {
        "config": config.to_dict(),
        "towers": {"image": image_tower.spec, "text": text_tower.spec},
        "sequence_length": sequence_stats,
        "feature_cache": cache_results,
        "data": {"shard_dirs": [str(d) for d in shard_dirs], "train_shards": len(train_files), "val_shards": len(val_files),
                 "manifests": manifests, "duplicate_captions": duplicates},
        "epochs_run": len(history.get("loss", [])),
        "epochs_this_call": len(timer.seconds),  # fewer than epochs_run after a resume; 0 for a finished run
        "final": {k: v[-1] for k, v in history.items()},
        "best": {k: (min(v) if "loss" in k else max(v)) for k, v in history.items() if "loss" in k or "accuracy" in k},
        "retrieval": evaluation,  # of the exported model (the WiSE-FT mix where --wise-ft is given)
        "wise_ft": None if mixed is None else {"alpha": config.finetune.wise_ft, "weights_mixed": mixed},
        "steps_per_epoch": steps,
        "timings": {"total_seconds": time.perf_counter() - started, "fit_seconds": fit_seconds,
                    "epoch_seconds": timer.seconds, "export_seconds": export_seconds},
        "device": [d.name for d in tf.config.list_logical_devices()],
        "strategy": {"name": config.train.strategy, "replicas": strategy.num_replicas_in_sync},
        "outputs": {"saved_model": str(output_dir / "saved_model") if export else None,
                    "keras_model": str(output_dir / "model.keras"),
                    "curves": str(output_dir / "curves.png"), "log": str(output_dir / "log.csv")},
    }
    files.write_json(output_dir / "results.json", results)
    return results

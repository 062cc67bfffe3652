"""tf.distribute for training: the strategy by name, each worker's output folder, dataset sharding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import tensorflow as tf

from dual_encoder.errors import InvalidArgumentError
from dual_encoder.model.replicas import num_workers

logger = logging.getLogger(__name__)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `--strategy`."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise InvalidArgumentError("--strategy multiworker needs the TF_CONFIG environment variable (cluster and task)")
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:
            if "program startup" not in str(error):
                raise
            raise InvalidArgumentError("--strategy multiworker must be set up before TensorFlow runs anything in the process: "
                             "call train() from a fresh process (e.g. python train.py)") from error
    raise InvalidArgumentError(f"unknown strategy {name!r}; choose default, mirrored or multiworker")


def worker_output_dir(output_dir: Path, strategy: tf.distribute.Strategy) -> Path:
    """The folder this process writes: the run folder, except on MultiWorkerMirroredStrategy
    workers other than the chief, which write their copy to `workers/<type>-<index>/` inside it.

    Keras callbacks know nothing of workers, so without this every worker would write the same
    files. Each worker still saves its own copy, and so can resume from its own backup, with or
    without a shared file system; only the chief's files are the run's.
    """
    if strategy.extended.should_checkpoint:
        return output_dir
    resolver = strategy.cluster_resolver
    return output_dir / "workers" / f"{resolver.task_type}-{resolver.task_id}"


def shard_across_workers(dataset: tf.data.Dataset, num_files: int, strategy: tf.distribute.Strategy) -> tf.data.Dataset:
    """Tells MultiWorkerMirroredStrategy how to split a dataset read from `num_files` shards.

    By file when every worker gets at least one (each reads only its own); else by data: every
    worker reads every shard and keeps its part of each batch, an exact split only for a
    deterministic (validation) order. tf.data's default (AUTO) fails at run time with fewer
    shard files than workers.
    """
    workers = num_workers(strategy)
    if workers == 1:
        return dataset
    policy = tf.data.experimental.AutoShardPolicy.FILE
    if num_files < workers:
        logger.warning("%d shard file(s) for %d workers: every worker reads all of them; write at least %d "
                       "shards (a smaller --images-per-shard) so that each reads its own", num_files, workers, workers)
        policy = tf.data.experimental.AutoShardPolicy.DATA
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)

"""The contrastive step's view of tf.distribute: workers, the replica context, gathers and sums.
"""

from __future__ import annotations

import tensorflow as tf

from dual_encoder.model import class_prior as _class_prior  # noqa: F401  (registers ClassPrior for loading)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """How many processes (machines) a strategy spans: more than one only under a multi-worker
    MultiWorkerMirroredStrategy."""
    if strategy.cluster_resolver is None:
        return 1
    return strategy.num_replicas_in_sync // len(strategy.extended.worker_devices)


def replica_context():
    """The replica context when there are several replicas, else None (one device, or cross-replica code)."""
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def gather_replicas(embeddings, ids):
    """All replicas' rows in replica order (`embeddings`: a list of one dtype; `ids`), this
    replica's row offset in them, and the global batch size. The gather carries gradients back to
    the replica that made each row."""
    local_size = tf.shape(ids)[0]
    ctx = replica_context()
    if ctx is None:
        return embeddings, ids, 0, local_size
    sizes = ctx.all_gather(local_size[None], axis=0)  # rows differ per replica in a partial last batch
    offset = tf.reduce_sum(sizes[: ctx.replica_id_in_sync_group])
    ids = tf.identity(ids)  # an input tensor has no device under MultiWorkerMirroredStrategy; collectives need one
    return ctx.all_gather(embeddings, axis=0), ctx.all_gather(ids, axis=0), offset, tf.reduce_sum(sizes)


def sum_replicas(values):
    """Sums (no gradient) over replicas, so that every replica holds the global value."""
    ctx = replica_context()
    return values if ctx is None else ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(values))

"""Shards whose records fail their checksums, found before training or evaluation reads them.

Every TFRecord carries a CRC of its length and data, so one flipped byte or a truncated copy of
a shard makes TensorFlow raise `DataLossError` wherever the shard is read: in the middle of an
epoch, deep inside Keras. `find_damaged_shards` reads each shard once, whole, to find them first,
so the error can name the shard and the way out. Every run reads them again: damage on disk
changes neither size nor mtime, so nothing cheaper would notice it. Reading is I/O and CRCs
only, no decoding: a 200 MB shard took 0.19 s from the page cache on our 2-core CPU (1.05 GB/s),
so a COCO-sized folder (~19 GB) costs about as much as reading it from disk once.
"""

from __future__ import annotations

import logging
from typing import Sequence

import tensorflow as tf

from dual_encoder.errors import DualEncoderError

logger = logging.getLogger(__name__)


class DamagedShardError(DualEncoderError, ValueError):
    """A shard fails its record checksums; the message names it and how to repair or skip it."""


def check_shard(path: str) -> str | None:
    """None when every record of `path` passes its checksum, else the reason."""
    try:
        tf.data.TFRecordDataset(path, buffer_size=8 << 20).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as error:
        return str(error.message).splitlines()[0][:200]
    return None


def find_damaged_shards(paths: Sequence[str]) -> dict[str, str]:
    """{shard: reason} for every shard of `paths` that fails its record checksums."""
    damaged = {}
    for path in paths:
        reason = check_shard(path)
        if reason is not None:
            damaged[path] = reason
    return damaged


def intact_shards(paths: Sequence[str], skip_damaged: bool = False) -> list[str]:
    """`paths` without damaged shards when `skip_damaged` (with a warning naming them); otherwise
    a damaged shard is a DamagedShardError naming it, how to rewrite it, and the flag that skips it."""
    paths = list(paths)
    damaged = find_damaged_shards(paths)
    if not damaged:
        return paths
    first, reason = next(iter(damaged.items()))
    found = f"{len(damaged)} of {len(paths)} shards are damaged, e.g. {first} ({reason})"
    if not skip_damaged:
        raise DamagedShardError(f"{found}: {repair_hint(first)}; or pass --skip-damaged-shards to use the "
                                f"{len(paths) - len(damaged)} intact ones")
    logger.warning("%s: --skip-damaged-shards leaves out %s", found, ", ".join(sorted(damaged)))
    return [p for p in paths if p not in damaged]


def repair_hint(shard: str) -> str:
    """How to get a damaged shard back: the writer rewrites exactly the shards it finds missing."""
    return (f"delete {shard} and rerun the python -m dual_encoder.data (or train.py) command that wrote its folder: "
            "only the missing shard is written again")

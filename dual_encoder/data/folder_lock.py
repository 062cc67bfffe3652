"""One writer per shard folder: a lock taken before the first file is touched and held to the end.

Two writers in one folder delete each other's temporary files (each cleans up what it takes for
a crashed run's leftovers), so the second must refuse at once instead of racing the first.

Local folders use `flock` on `DIR/.writer.lock`: the kernel releases it when the holder ends,
even by `kill -9`, so a lock never outlives its writer and a rerun after a crash just works.
Remote folders (gs://, hdfs://) have no such lock; there the lock file itself is the lock,
created only if absent (by check-then-rename, which is not atomic there: two writers
starting in the same instant can both get it). One whose writer ran on this host and no longer runs is stale and
taken over (with a warning); one from another host is refused with how to clear it by hand.
The file records pid, host and start time, so the refusal can say who holds the folder.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from typing import Iterator, Optional

import tensorflow as tf

from dual_encoder import files
from dual_encoder.data.collect import is_url
from dual_encoder.errors import DualEncoderError

try:
    import fcntl
except ImportError:  # not POSIX: every folder takes the lock-file path
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_NAME = ".writer.lock"
_CANDIDATE = ".writer-candidate"  # not a prefix of LOCK_NAME: some file systems (ram://) answer `exists` by prefix


class FolderLockedError(DualEncoderError, OSError):
    """Another writer holds the folder; the message names the folder, the lock and its holder."""


@contextlib.contextmanager
def folder_lock(folder: str, name: str = LOCK_NAME) -> Iterator[str]:
    """Holds the writer lock of `folder` (which must exist) for the block; yields the lock's path.
    `name`: the lock file's name, for a lock on something inside `folder` that is itself swapped
    out by renames (an index folder is locked by `INDEX.writer.lock` beside it)."""
    path = os.path.join(folder, name)
    fd = _try_lock_local(folder, path) if fcntl is not None and not is_url(folder) else None
    if fd is not None:
        try:
            yield path
        finally:
            _remove(path)  # while still holding it: a waiting writer then locks a fresh file
            os.close(fd)
    else:
        _lock_remote(folder, path)
        try:
            yield path
        finally:
            _remove(path)


def _try_lock_local(folder: str, path: str) -> Optional[int]:
    """The flock'ed lock file, or None where the file system refuses flock (NFS without lockd):
    then the lock file alone is the lock, as on gs://."""
    try:
        return _lock_local(folder, path)
    except FolderLockedError:
        raise
    except OSError as error:
        logger.warning("%s: the file system refuses flock (%s); the lock file alone guards the folder", folder, error)
        return None


def _lock_local(folder: str, path: str) -> int:
    """flock on the lock file; retried when the file was removed by a writer finishing meanwhile."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.read(fd, 4096))
            os.close(fd)
            raise FolderLockedError(_refusal(folder, path, holder, "it is released when that writer ends")) from None
        if _same_file(fd, path):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_holder()).encode("utf-8"))
    return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _lock_remote(folder: str, path: str) -> None:
    """Creates the lock file only if absent (write a temporary, rename without overwriting)."""
    holder = _read_remote(path)
    if holder is not None:
        if not _is_stale(holder):
            hint = f"if that writer no longer runs (killed), delete {path} and rerun"
            raise FolderLockedError(_refusal(folder, path, holder, hint))
        logger.warning("%s: taking over the lock of writer pid %s on this host, which no longer runs", path, holder["pid"])
        _remove(path)
    tmp = files.temporary_name(os.path.join(folder, _CANDIDATE))
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(_holder()))
    try:
        tf.io.gfile.rename(tmp, path, overwrite=False)
    except tf.errors.AlreadyExistsError:
        _remove(tmp)
        raise FolderLockedError(_refusal(folder, path, _read_remote(path), "another writer took it just now")) from None


def _read_remote(path: str) -> Optional[dict]:
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return _parse(f.read())
    except tf.errors.NotFoundError:
        return None


def _is_stale(holder: dict) -> bool:
    """Only a writer on this host can be checked: stale when its pid no longer runs."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        pass
    return False


def _holder() -> dict:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": now}


def _parse(raw: bytes) -> dict:
    """The holder a lock file names; {} while its writer is still writing it (or for a foreign file)."""
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _refusal(folder: str, path: str, holder: Optional[dict], hint: str) -> str:
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}" if holder
           else "a writer that has not recorded itself yet")
    return (f"{folder} is being written by another writer ({who}; lock {path}): one writer per folder at a time, "
            f"wait for it or write to another folder; {hint}")


def _remove(path: str) -> None:
    with contextlib.suppress(tf.errors.NotFoundError, FileNotFoundError):
        tf.io.gfile.remove(path)

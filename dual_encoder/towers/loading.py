"""What every tower source shares: local folders and files, downloads that fail offline, identities.

A failed download becomes one `PretrainedWeightsUnavailable` that says what to pass instead; a
local tower is identified by the sha256 of its files, a named preset by its versioned handle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.error
from pathlib import Path
from typing import Optional, Union

from dual_encoder import _compat, files
from dual_encoder.errors import DualEncoderError, InvalidArgumentError, PathNotFoundError


class PretrainedWeightsUnavailable(DualEncoderError, RuntimeError):
    """Pretrained weights (or a preset's config) could not be downloaded, e.g. offline."""


# --- shared helpers ----------------------------------------------------------------------


def is_local(name: str) -> bool:
    return os.path.isdir(os.path.expanduser(name))


def local_weights_file(weights) -> Optional[str]:
    """The local weights file `weights` names; None for None / "imagenet" (download)."""
    if weights is None or weights in ("imagenet", "preset"):
        return None
    path = os.path.expanduser(str(weights))
    if not os.path.isfile(path):
        raise PathNotFoundError(f"weights file {str(weights)!r} not found; pass 'imagenet', a local weights file "
                                "(.h5 / .weights.h5) or None")
    return path


def _is_download_failure(exc: BaseException) -> bool:
    """What an offline download raises: keras.utils.get_file wraps URLError in a bare
    `Exception("URL fetch failure ...")`; kagglehub raises requests' ConnectionError and
    huggingface_hub LocalEntryNotFoundError (both OSError)."""
    return isinstance(exc, (OSError, urllib.error.URLError)) or str(exc).startswith("URL fetch failure")


@contextlib.contextmanager
def downloading(name: str, what: str, instead: str):
    """Turns a failed download into one PretrainedWeightsUnavailable saying what to pass instead
    (errors about a local folder are the user's to see as they are)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - keras raises a bare Exception for fetch failures
        if is_local(name) or not _is_download_failure(exc):
            raise
        cause = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise PretrainedWeightsUnavailable(
            f"{what} could not be downloaded (no network here?): {cause}\nPass instead: {instead}") from None


def _fingerprint(path: Union[str, os.PathLike]) -> str:
    """sha256 over a file's or directory's contents: the spec changes when the weights do."""
    path = Path(path).expanduser()
    found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in found:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(bytes.fromhex(files.file_sha256(file)))
    return digest.hexdigest()


def local_id(path: str) -> dict:
    return {"path": os.path.abspath(os.path.expanduser(path)), "sha256": _fingerprint(path)}


def portable(name: Optional[str]) -> Optional[str]:
    """Local paths made absolute, so `from_spec` works from any working directory."""
    return os.path.abspath(os.path.expanduser(name)) if name and os.path.exists(os.path.expanduser(name)) else name


def preset_id(name: str) -> dict:
    """A local preset by content; a named one by its versioned kaggle handle."""
    return local_id(name) if is_local(name) else {"preset": _compat.builtin_preset_handle(name)}


def is_hub(name: str, *tasks) -> bool:
    """A local preset folder, a kaggle:// / hf:// handle, or a built-in preset of one of `tasks`."""
    return is_local(name) or "://" in name or any(name in task.presets for task in tasks)


def read_json(directory: str, name: str) -> Optional[dict]:
    path = Path(directory).expanduser() / name
    return json.loads(path.read_text()) if path.is_file() else None


def unknown_tower(kind: str, name: str, known) -> Exception:
    if os.sep in name or name.startswith((".", "~")):  # meant as a folder
        return PathNotFoundError(f"{kind} tower {name!r}: no such directory (a local tower is a keras-hub preset "
                                 f"folder{', or a Hugging Face / sentence-transformers BERT folder' if kind == 'text' else ''})")
    return InvalidArgumentError(
        f"unknown {kind} tower {name!r}: not one of {', '.join(known)}, not a keras-hub preset of that kind, "
        "not a kaggle:// or hf:// handle and not an existing preset directory")

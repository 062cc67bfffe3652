"""The run folder as a record: its log, the data it trained on, and the settings a resume must keep.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from dual_encoder import files
from dual_encoder.errors import InvalidArgumentError
from dual_encoder.training.checkpoints import CheckpointWriteError

# More (or fewer) epochs; cached or not, the same model; how shards are written (the shards
# themselves are compared by data_identity, and these settings do nothing with --tfrecords).
# --skip-damaged-shards only drops shards that cannot be read anyway.
# What is exported (--wise-ft mixes anew, re-exporting a finished run) and how the same gradients
# are computed (--grad-cache-chunk) change nothing trained so far either.
RESUMABLE_CHANGES = {"epochs", "feature_cache", "val_fraction", "split_seed", "images_per_shard", "max_side",
                     "skip_damaged_shards", "wise_ft", "grad_cache_chunk"}


def prepare_output_dir(path: Path) -> Path:
    """The run folder, created if needed, once it is known to be a folder this process can write
    (before any training, instead of failing at the first checkpoint)."""
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"--output-dir {path}: is a file, not a folder (pass a folder; it is created if needed)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-check{files.TMP_MARK}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise CheckpointWriteError(f"--output-dir {path}: cannot write there ({error.strerror or error})",
                                   error.errno) from None
    _remove_temporaries(path)
    return path


def _remove_temporaries(path: Path) -> None:
    """Leftovers of a writer killed mid-write (whole-size weights, model.keras, saved_model/):
    one run writes a folder at a time, so any temporary found when it starts is stale."""
    for folder in (path, path / "checkpoints", path / "backup"):
        for leftover in folder.glob(f"*{files.TMP_MARK}*") if folder.is_dir() else ():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def read_log(path: Path) -> dict[str, list[float]]:
    """The whole run's history from log.csv (resumed runs append; a repeated epoch keeps its last row)."""
    import csv

    if not path.exists():
        return {}
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = row
    history: dict[str, list[float]] = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            if key != "epoch" and value not in ("", None):
                history.setdefault(key, []).append(float(value))
    return history


def read_manifests(shard_dirs: Sequence[str]) -> dict[str, Optional[dict]]:
    """Each shard folder's manifest (None for a folder without one), read once per run."""
    from dual_encoder.data.tfrecords import read_manifest

    manifests = {}
    for directory in shard_dirs:
        try:
            manifests[directory] = read_manifest(directory)
        except (FileNotFoundError, ValueError):
            manifests[directory] = None
    return manifests


def data_identity(manifests: dict[str, Optional[dict]]) -> list[str]:
    """What a run trains on, however the folders are spelled: a digest of each folder's manifest
    (rewritten shards get a new one), or the folder's absolute path where there is none."""
    identity = []
    for directory, manifest in manifests.items():
        if manifest is None:
            identity.append(os.path.abspath(directory))
        else:
            identity.append(files.json_digest(manifest, length=16))
    return sorted(identity)


def check_same_config(output_dir: Path, config_dict: dict, shards: list[str]) -> None:
    """Resuming into a folder trained with other settings, or on other data, would mix two runs
    (weights, log.csv, and a best checkpoint chosen across two validation sets)."""
    path = output_dir / "config.json"
    if path.exists() and (output_dir / "backup").exists():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            raise InvalidArgumentError(f"{path} is unreadable, so the run in {output_dir} cannot be checked for a resume: "
                                       "use a new --output-dir, or delete its backup/ to train it again") from None
        # A setting newer than the folder's config.json did not exist when it was written: not a change.
        changed = sorted(
            f"{section}.{key}" for section in ("model", "data", "train", "finetune") for key in config_dict.get(section, {})
            if key in previous.get(section, {}) and previous[section][key] != config_dict[section][key]
            and key not in RESUMABLE_CHANGES
        )
        if previous.get("preset") != config_dict["preset"]:
            changed.append("preset")
        if previous.get("shards", shards) != shards:
            changed.append("the training data (other shard folders, or shards written again)")
        if changed:
            raise InvalidArgumentError(
                f"{output_dir} holds a run with other settings ({', '.join(changed)}); "
                "use a new --output-dir, or the same flags and data to resume it"
            )
    files.write_json(path, {**config_dict, "shards": shards})

"""Tiny image files and shard readers shared by the data tests (everything is made in tmp_path)."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from dual_encoder.cli.sources import add_source_arguments
from dual_encoder.data import schema
from dual_encoder.data.tfrecords import list_shards

REPO = Path(__file__).resolve().parents[1]


def pattern(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colour image (JPEG keeps it within a few levels), different per seed."""
    y, x = np.mgrid[0:height, 0:width]
    phase = seed * 0.7
    rgb = [127 + 100 * np.sin(x / width * 3 + phase + c) * np.cos(y / height * 2 + c) for c in range(3)]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def encode(image, fmt: str = "JPEG", **kwargs) -> bytes:
    """Bytes of `image` (an array or a PIL image) in `fmt`."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def rotated_jpeg() -> bytes:
    """64 wide x 32 high, left half red, right half blue, EXIF orientation 6 (display rotated 90 deg clockwise).

    Shown upright it is 32 wide x 64 high with red on top.
    """
    array = np.zeros((32, 64, 3), np.uint8)
    array[:, :32] = (255, 0, 0)
    array[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(array, exif=exif)


def close(a: np.ndarray, b: np.ndarray, tolerance: float = 12) -> bool:
    """Same shape and a mean absolute difference one JPEG generation at quality >= 90 stays under."""
    return a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < tolerance


def parse_source_flags(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)
    return parser.parse_args(list(flags))


def decode(jpeg: bytes) -> np.ndarray:
    """Decodes as the training pipeline will."""
    return tf.io.decode_jpeg(jpeg, channels=3).numpy()


def read_split(dirs, split: str) -> list[dict]:
    """Every example of `split`, parsed into plain Python values."""
    examples = []
    for path in list_shards(dirs, split):
        for serialized in tf.data.TFRecordDataset(path):
            parsed = schema.parse_example(serialized)
            examples.append(
                {
                    "id": parsed[schema.IMAGE_ID].numpy().decode(),
                    "captions": [c.decode() for c in parsed[schema.CAPTIONS].numpy()],
                    "jpeg": parsed[schema.IMAGE].numpy(),
                    "height": int(parsed[schema.HEIGHT]),
                    "width": int(parsed[schema.WIDTH]),
                    "source": parsed[schema.SOURCE].numpy().decode(),
                }
            )
    return examples


def write_csv(path: Path, rows: list[tuple[str, str]], header=("image", "caption")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(*args: str, code: str = "", timeout: int = 120) -> subprocess.CompletedProcess:
    """Runs `python -m dual_encoder.data ARGS` in a fresh process; `code` runs first (e.g. a patch)."""
    program = (
        f"import runpy, sys\n{code}\n"
        f"sys.argv = ['python -m dual_encoder.data', *{list(args)!r}]\n"
        "runpy.run_module('dual_encoder.data', run_name='__main__', alter_sys=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )

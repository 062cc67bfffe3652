"""Any input image -> RGB JPEG bytes, the one image format a shard holds.

Shards store JPEG so that the tf.data pipeline needs one decoder (`tf.io.decode_jpeg`) and no
per-format branches. Everything odd about real photos is settled here, once: EXIF rotation,
grayscale/CMYK/palette/alpha modes, 16-bit and float images, oversized photos, and broken files.
A file that is already a baseline RGB JPEG needing no change keeps its exact bytes (no second
lossy encode), but is still fully decoded once so that a truncated file never reaches a shard.

An image that cannot be used raises a `SkippedImageError` whose `reason` is the skip count it
goes under; the writer counts it and goes on, so one bad entry never stops a run. Local paths
are opened only when they name a regular file: a FIFO named like an image would block the
writer forever, and a directory or a symlink loop would end the run with an OS error.
"""

from __future__ import annotations

import io
import os
import stat
from typing import Optional, Union

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

from dual_encoder.data.collect import is_url
from dual_encoder.errors import DualEncoderError

JPEG_QUALITY = 95
EXIF_ORIENTATION = 0x0112
_JPEG_END = b"\xff\xd9"
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as a viewer shows them
SIXTEEN_BIT_WHITE = 65535
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after the check must not block the open
_REMOTE_UNREADABLE = (tf.errors.FailedPreconditionError, tf.errors.InvalidArgumentError, tf.errors.PermissionDeniedError)


class SkippedImageError(DualEncoderError):
    """An image the writer leaves out; `reason` is the skip count it goes under.

    Every kind but `MissingImageError` is an `UndecodableImageError`, so callers that catch those
    two (the evaluation embedders) still catch them all.
    """

    reason = "undecodable"


class UndecodableImageError(SkippedImageError, ValueError):
    """The input is not a usable image (zero bytes, truncated, not an image); counted `undecodable`."""


class UnsupportedImageError(UndecodableImageError):
    """A real image whose pixels have no known 8-bit meaning (e.g. floats outside [0, 1], 32-bit
    integers); counted `unsupported_image` rather than stored with wrong pixels."""

    reason = "unsupported_image"


class MissingImageError(SkippedImageError, FileNotFoundError):
    """The image file does not exist (any more); counted `missing_file`."""

    reason = "missing_file"


class NotAFileError(UndecodableImageError):
    """The path names a directory, FIFO, socket or device, not a regular file; counted `not_a_file`."""

    reason = "not_a_file"


class UnreadableImageError(UndecodableImageError):
    """The file exists but cannot be opened or read (a symlink loop, no permission); counted `unreadable`."""

    reason = "unreadable"


def read_bytes(path: str) -> bytes:
    """Reads a local file (regular files only) or a remote one (gs://, hdfs://, ...) through `tf.io.gfile`."""
    return _read_remote(path) if is_url(path) else _read_local(path)


def _read_local(path: str) -> bytes:
    """Checks the file type before opening, and again on the open file in case it was swapped meanwhile."""
    _require_regular(path, _mode(path))
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK)
    except OSError as e:
        raise _os_problem(path, e) from e
    with os.fdopen(fd, "rb") as f:
        _require_regular(path, os.fstat(fd).st_mode)
        try:
            return f.read()
        except OSError as e:
            raise _os_problem(path, e) from e


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError as e:
        raise _os_problem(path, e) from e


def _require_regular(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket or device"
        raise NotAFileError(f"{path}: {kind}, not a regular file")


def _os_problem(path: str, error: OSError) -> SkippedImageError:
    if isinstance(error, (FileNotFoundError, NotADirectoryError)):  # NotADirectory: a parent is a file
        return MissingImageError(f"{path}: no such file")
    return UnreadableImageError(f"{path}: cannot read ({error.strerror or error})")


def _read_remote(path: str) -> bytes:
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError as e:
        raise MissingImageError(f"{path}: no such file") from e
    except _REMOTE_UNREADABLE as e:  # a directory, no permission: this file only, not the storage
        raise UnreadableImageError(f"{path}: cannot read ({e.message})") from e


def to_rgb_jpeg(
    data: Union[bytes, np.ndarray], *, max_side: Optional[int] = None, name: str = "image"
) -> tuple[bytes, int, int]:
    """Returns (jpeg_bytes, height, width) of `data` (encoded bytes or an HxW[xC] uint8 array).

    The longer side is shrunk to `max_side` when given. `name` (usually the file path) only
    appears in error messages. Raises `UndecodableImageError` for anything that is not an image.
    """
    if isinstance(data, np.ndarray):
        image = _from_array(data, name)
        fast_path_ok = False
    else:
        image = _decode(bytes(data), name)
        fast_path_ok = _is_plain_jpeg(image, data)
    if fast_path_ok and (max_side is None or max(image.size) <= max_side):
        return bytes(data), image.height, image.width
    mode = image.mode
    try:
        if _orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
        image = to_rgb(image, name)
        if max_side is not None and max(image.size) > max_side:
            scale = max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
    except SkippedImageError:
        raise
    except (OSError, ValueError) as e:  # an exotic mode Pillow cannot convert
        raise UndecodableImageError(f"{name}: cannot convert a {mode} image to RGB JPEG ({e})") from e
    return out.getvalue(), image.height, image.width


def _decode(data: bytes, name: str) -> Image.Image:
    """Opens and fully decodes; Pillow raises on truncation because nothing tells it to tolerate it."""
    if not data:
        raise UndecodableImageError(f"{name}: empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError as e:
        raise UndecodableImageError(f"{name}: not an image (unknown format)") from e
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise UndecodableImageError(f"{name}: cannot decode {_claimed_format(data)} ({e})") from e
    return image


def _claimed_format(data: bytes) -> str:
    """A short name of what the bytes claim to be, for error messages."""
    if data[:2] == b"\xff\xd8":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    return "image"


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise UndecodableImageError(
            f"{name}: array of shape {array.shape} and dtype {array.dtype} is not an HxW[x1|3|4] uint8 image"
        )
    if array.size == 0:
        raise UndecodableImageError(f"{name}: empty array of shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _is_plain_jpeg(image: Image.Image, data: bytes) -> bool:
    """True when the original bytes can go into a shard unchanged.

    Progressive files are re-encoded (baseline decodes faster in the input pipeline); a missing
    end-of-image marker means the decoder papered over a gap, so the pixels are re-encoded too.
    """
    return (
        image.format == "JPEG"
        and image.mode == "RGB"
        and not image.info.get("progressive")
        and _orientation(image) == 1
        and data.rstrip(b"\x00").endswith(_JPEG_END)
    )


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright); a broken EXIF block counts as upright, not as a bad image."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # Pillow raises several types for malformed EXIF; the pixels are still fine.
        return 1


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Converts every Pillow mode to 8-bit RGB; alpha is flattened onto white.

    Deep gray images are scaled from their own white level (65535 for 16-bit, 1.0 for floats), never
    clipped: Pillow's own conversion clips, which turns a [0, 1] float TIFF almost black.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "F" or image.mode.startswith("I"):
        white = _float_white(image, name) if image.mode == "F" else _integer_white(image, name)
        values = np.asarray(image, dtype=np.float64) * (255.0 / white)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _float_white(image: Image.Image, name: str) -> float:
    """1.0 for float images in [0, 1] (the tf.image convention); any other range has no known white."""
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not np.isfinite(values).all() or low < 0 or high > 1:
        raise UnsupportedImageError(
            f"{name}: 32-bit float image with values in [{low:.4g}, {high:.4g}]; only floats in [0, 1] have a known "
            "white level (convert it to an 8- or 16-bit image)"
        )
    return 1.0


def _integer_white(image: Image.Image, name: str) -> float:
    """65535 for 16-bit gray (PNG, TIFF; Pillow scales 16-bit PGM to it); 32-bit integers have no known white."""
    # Pillow before 10.3 opens 16-bit gray PNGs as mode I; PNG samples have at most 16 bits
    sixteen_bit = image.mode.startswith("I;16") or (image.mode == "I" and (image.format in ("PPM", "PNG")
                                                                            or _tiff_bits(image) == 16))
    if not sixteen_bit or np.asarray(image).min(initial=0) < 0:
        raise UnsupportedImageError(
            f"{name}: {_tiff_bits(image) or 32}-bit integer image (mode {image.mode}) has no known white level; "
            "convert it to an 8- or 16-bit unsigned image"
        )
    return SIXTEEN_BIT_WHITE


def _tiff_bits(image: Image.Image) -> Optional[int]:
    """BitsPerSample of a TIFF (tag 258), else None."""
    bits = getattr(image, "tag_v2", {}).get(258)
    return int(bits[0] if isinstance(bits, tuple) else bits) if bits else None

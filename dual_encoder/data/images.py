"""Any input image -> RGB JPEG bytes, the one image format a shard holds.

Shards store JPEG so that the tf.data pipeline needs one decoder (`tf.io.decode_jpeg`) and no
per-format branches. Everything odd about real photos is settled here, once: EXIF rotation,
grayscale/CMYK/palette/alpha modes, 16-bit PNGs, oversized photos, and broken files. A file that
is already a baseline RGB JPEG needing no change keeps its exact bytes (no second lossy encode),
but is still fully decoded once so that a truncated file never reaches a shard.
"""

from __future__ import annotations

import io
from typing import Optional, Union

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

from dual_encoder.errors import DualEncoderError

JPEG_QUALITY = 95
EXIF_ORIENTATION = 0x0112
_JPEG_END = b"\xff\xd9"
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as a viewer shows them


class UndecodableImageError(DualEncoderError, ValueError):
    """The input is not a usable image (zero bytes, truncated, not an image); counted `undecodable`."""


class MissingImageError(DualEncoderError, FileNotFoundError):
    """The image file does not exist (any more); counted `missing_file`."""


def read_bytes(path: str) -> bytes:
    """Reads a local or remote (gs://, hdfs://, ...) file through `tf.io.gfile`."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError as e:
        raise MissingImageError(f"{path}: no such file") from e


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
        image = _to_rgb(image)
        if max_side is not None and max(image.size) > max_side:
            scale = max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
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


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts every Pillow mode to 8-bit RGB; alpha is flattened onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit gray: scale, do not clip
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")

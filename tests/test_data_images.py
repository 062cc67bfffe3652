"""Any input image -> RGB JPEG: fast path, mode conversions, EXIF rotation, resizing, broken files."""

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from dual_encoder.data.images import (
    MissingImageError,
    NotAFileError,
    SkippedImageError,
    UndecodableImageError,
    UnreadableImageError,
    UnsupportedImageError,
    read_bytes,
    to_rgb_jpeg,
)
from dual_encoder.testing import close, decode, encode, pattern, rotated_jpeg


def test_plain_jpeg_keeps_its_bytes():
    original = encode(pattern(), quality=90)
    jpeg, height, width = to_rgb_jpeg(original)
    assert jpeg == original
    assert (height, width) == (48, 64)


@pytest.mark.parametrize(
    "what, data",
    [
        ("progressive", encode(pattern(), quality=90, progressive=True)),
        ("png", encode(pattern(), "PNG")),
        ("array", pattern()),
    ],
)
def test_other_inputs_are_reencoded_with_the_same_pixels(what, data):
    jpeg, height, width = to_rgb_jpeg(data)
    assert isinstance(data, np.ndarray) or jpeg != data
    assert (height, width) == (48, 64)
    assert close(decode(jpeg), pattern()), what


def test_grayscale_palette_and_cmyk_become_rgb():
    gray = Image.fromarray(pattern()).convert("L")
    expected_gray = np.repeat(np.asarray(gray)[:, :, None], 3, axis=2)
    for data in (encode(gray), encode(gray, "PNG"), np.asarray(gray), np.asarray(gray)[:, :, None]):
        assert close(decode(to_rgb_jpeg(data)[0]), expected_gray)
    palette = Image.fromarray(pattern()).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    assert close(decode(to_rgb_jpeg(encode(palette, "PNG"))[0]), np.asarray(palette.convert("RGB")))
    cmyk = Image.fromarray(pattern()).convert("CMYK")
    cmyk_jpeg = encode(cmyk, quality=95)
    assert Image.open(io.BytesIO(cmyk_jpeg)).mode == "CMYK"
    assert close(decode(to_rgb_jpeg(cmyk_jpeg)[0]), np.asarray(cmyk.convert("RGB")))


def test_alpha_is_flattened_on_white_and_16_bit_is_scaled():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)  # opaque red left, fully transparent right
    pixels = decode(to_rgb_jpeg(encode(rgba, "PNG"))[0])
    assert close(pixels[:, :12], np.full((32, 12, 3), (255, 0, 0), np.uint8))
    assert close(pixels[:, 20:], np.full((32, 12, 3), 255, np.uint8))
    deep = Image.fromarray((np.asarray(Image.fromarray(pattern()).convert("L")).astype(np.uint16) * 257))
    assert deep.mode.startswith("I")
    expected = np.repeat(np.asarray(Image.fromarray(pattern()).convert("L"))[:, :, None], 3, axis=2)
    assert close(decode(to_rgb_jpeg(encode(deep, "PNG"))[0]), expected)


def test_exif_rotation_is_applied():
    jpeg, height, width = to_rgb_jpeg(rotated_jpeg())
    assert (height, width) == (64, 32)
    pixels = decode(jpeg)
    assert pixels.shape == (64, 32, 3)
    assert close(pixels[:28], np.full((28, 32, 3), (255, 0, 0), np.uint8))  # red on top
    assert close(pixels[36:], np.full((28, 32, 3), (0, 0, 255), np.uint8))


def test_max_side_shrinks_the_longer_side_only_when_needed():
    jpeg, height, width = to_rgb_jpeg(encode(pattern(48, 96)), max_side=32)
    assert (height, width) == (16, 32) == decode(jpeg).shape[:2]
    original = encode(pattern(48, 96))
    assert to_rgb_jpeg(original, max_side=96)[0] == original
    assert to_rgb_jpeg(rotated_jpeg(), max_side=16)[1:] == (16, 8)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"hello, I am a text file\n", "not an image"),
        (encode(pattern(), quality=90)[:400], "cannot decode JPEG"),
        (encode(pattern(), "PNG")[:200], "cannot decode PNG"),
        (np.zeros((8, 8), np.float32), "not an HxW"),
        (np.zeros((8, 8, 2), np.uint8), "not an HxW"),
    ],
)
def test_broken_input_raises_undecodable_naming_it(data, message):
    with pytest.raises(UndecodableImageError, match=message) as raised:
        to_rgb_jpeg(data, name="some/file.jpg")
    assert "some/file.jpg" in str(raised.value)


def test_read_bytes_reports_missing_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"abc")
    assert read_bytes(str(tmp_path / "a.jpg")) == b"abc"
    with pytest.raises(MissingImageError, match="b.jpg"):
        read_bytes(str(tmp_path / "b.jpg"))


# --- only regular files are opened (issue 15) ------------------------------------------------


@pytest.fixture
def fifo(tmp_path):
    """A FIFO named like an image. Its write end is held open and closed after a few seconds, so a
    reader that wrongly opens it gets an empty file instead of blocking the test run forever."""
    path = tmp_path / "fifo.jpg"
    os.mkfifo(path)
    write_end = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    open_ends = [write_end]
    closer = threading.Timer(3, lambda: os.close(open_ends.pop()))
    closer.start()
    yield path
    closer.cancel()
    closer.join()  # now it either ran or never will
    for end in open_ends:
        os.close(end)


def test_read_bytes_opens_only_regular_files(tmp_path, fifo):
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "loop1.jpg").symlink_to("loop2.jpg")
    (tmp_path / "loop2.jpg").symlink_to("loop1.jpg")
    (tmp_path / "a.jpg").write_bytes(b"abc")
    (tmp_path / "dangling.jpg").symlink_to("gone.jpg")
    cases = [
        (tmp_path / "dir.jpg", NotAFileError, "a directory, not a regular file", "not_a_file"),
        (fifo, NotAFileError, "a FIFO, not a regular file", "not_a_file"),
        (tmp_path / "loop1.jpg", UnreadableImageError, "cannot read .*symbolic links", "unreadable"),
        (tmp_path / "dangling.jpg", MissingImageError, "no such file", "missing_file"),
        (tmp_path / "a.jpg" / "b.jpg", MissingImageError, "no such file", "missing_file"),  # a parent is a file
    ]
    for path, error, message, reason in cases:
        with pytest.raises(error, match=message) as raised:
            read_bytes(str(path))
        assert str(path) in str(raised.value) and raised.value.reason == reason
        assert isinstance(raised.value, SkippedImageError)
    assert issubclass(NotAFileError, UndecodableImageError) and issubclass(UnreadableImageError, UndecodableImageError)


# --- deep images: scaled from their own white level, or refused (issue 15) ----------------------

RAMP = np.linspace(0, 1, 48 * 64, dtype=np.float64).reshape(48, 64)  # black to white, row by row


def tiff(array: np.ndarray) -> bytes:
    return encode(Image.fromarray(array), "TIFF")


def gray_rgb(levels: np.ndarray) -> np.ndarray:
    return np.repeat(np.rint(levels).astype(np.uint8)[:, :, None], 3, axis=2)


@pytest.mark.parametrize("what, data, mode", [
    ("float32 in [0, 1]", tiff(RAMP.astype(np.float32)), "F"),
    ("16-bit", tiff(np.rint(RAMP * 65535).astype(np.uint16)), "I;16"),
    ("16-bit PNG", encode(Image.fromarray(np.rint(RAMP * 65535).astype(np.uint16)), "PNG"), "I;16"),
])
def test_deep_gray_images_are_scaled_from_their_white_level(what, data, mode):
    assert Image.open(io.BytesIO(data)).mode == mode, what  # a real file of that kind, as Pillow writes it
    assert close(decode(to_rgb_jpeg(data)[0]), gray_rgb(RAMP * 255), tolerance=2), what


def test_dark_16_bit_image_stays_dark():
    """A 16-bit image whose values happen to stay under 256 is still 16-bit: nearly black, not bright."""
    dark = np.rint(RAMP * 255).astype(np.uint16)  # 0..255 out of 65535
    pixels = decode(to_rgb_jpeg(tiff(dark))[0])
    assert pixels.max() <= 3


@pytest.mark.parametrize("what, data, message", [
    ("32-bit integer", tiff(np.rint(RAMP * 1000).astype(np.int32)), "32-bit integer image .* no known white level"),
    ("float above 1", tiff((RAMP * 4).astype(np.float32)), r"float image with values in \[0, 4\]"),
    ("negative float", tiff((RAMP - 0.5).astype(np.float32)), r"values in \[-0.5, 0.5\]"),
    ("float NaN", tiff(np.full((4, 4), np.nan, np.float32)), "only floats in"),
])
def test_deep_images_without_a_known_white_are_unsupported_not_wrong(what, data, message):
    with pytest.raises(UnsupportedImageError, match=message) as raised:
        to_rgb_jpeg(data, name="scan.tif")
    assert "scan.tif" in str(raised.value) and raised.value.reason == "unsupported_image", what


def test_a_16_bit_png_opened_as_mode_i_is_scaled_like_one_opened_as_i16():
    """Pillow before 10.3 opens 16-bit gray PNGs as mode I (32-bit): still 16-bit samples."""
    import numpy as np
    from PIL import Image

    from dual_encoder.data import images

    image = Image.fromarray(np.full((4, 4), 32768, np.int32), mode="I")
    image.format = "PNG"
    assert abs(int(np.asarray(images.to_rgb(image, "gray16.png"))[0, 0, 0]) - 128) <= 1

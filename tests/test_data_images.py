"""Any input image -> RGB JPEG: fast path, mode conversions, EXIF rotation, resizing, broken files."""

import io

import numpy as np
import pytest
from PIL import Image

from dual_encoder.data.images import MissingImageError, UndecodableImageError, read_bytes, to_rgb_jpeg
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

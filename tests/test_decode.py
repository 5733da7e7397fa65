"""decode_image: what a user gets for every bad file and every convertible kind of image."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from fingerprint_core.decode import IMAGE_EXTENSIONS, MAX_PIXELS, DecodeError, decode_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (24, 20, 3), dtype=np.uint8)  # (H, W, 3)


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR claims width x height (CRC fixed): no pixels are ever made."""
    data = bytearray(encode(Image.new("L", (8, 8))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR type + payload
    return bytes(data)


def png_16_bit_rgb(values: np.ndarray) -> bytes:
    """A 48-bit RGB PNG written by hand (Pillow cannot save one)."""
    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def decode_error(source, **kw) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(source, **kw)
    return str(info.value)


# --- good images ------------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly_from_bytes_and_path(tmp_path):
    data = encode(RGB)
    (tmp_path / "x.png").write_bytes(data)
    for source in (data, tmp_path / "x.png", str(tmp_path / "x.png")):
        out = decode_image(source)
        assert out.array.dtype == np.uint8 and out.array.flags.c_contiguous
        np.testing.assert_array_equal(out.array, RGB)
        assert out.notes == ()


def test_grayscale_png_has_one_channel():
    gray = RGB[..., 0]
    out = decode_image(encode(gray))
    assert out.array.shape == (24, 20, 1)
    np.testing.assert_array_equal(out.array[..., 0], gray)
    assert out.notes == ()


def test_rgb_with_identical_channels_stays_rgb():
    same = np.repeat(RGB[..., :1], 3, axis=2)
    assert decode_image(encode(same)).array.shape == (24, 20, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_other_formats_decode_to_the_right_shape(fmt):
    out = decode_image(encode(RGB, fmt))
    assert out.array.shape == (24, 20, 3) and out.array.dtype == np.uint8


def test_the_extension_is_not_trusted(tmp_path):
    path = tmp_path / "really_a_jpeg.png"
    path.write_bytes(encode(RGB, "JPEG"))
    assert decode_image(path).array.shape == (24, 20, 3)


def test_extensions_cover_the_formats_datasets_use():
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"} == IMAGE_EXTENSIONS


# --- bad files ----------------------------------------------------------------------------------


def test_text_file_named_png_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("model,family\ndcgan,gan\n")
    message = decode_error(path)
    assert message.startswith("not an image: unrecognised file format")
    assert "text" in message
    assert "notes.png" not in message  # the caller names the file


def test_binary_junk_and_empty_file_are_not_images():
    assert decode_error(bytes(range(256)) * 4) == "not an image: unrecognised file format"
    assert decode_error(b"") == "not an image: the file is empty"


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.9])
def test_truncated_png_fails(keep):
    data = encode(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    message = decode_error(data[: int(len(data) * keep)])
    assert message.startswith("truncated or corrupt image data (")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_png_with_a_broken_header_is_corrupt_not_unknown():
    data = bytearray(encode(RGB))
    data[20] ^= 0xFF  # inside IHDR, so its CRC no longer matches
    assert decode_error(bytes(data)) == (
        "truncated or corrupt image data (the PNG header is unreadable)"
    )


def test_corrupt_jpeg_fails():
    data = encode(RGB, "JPEG")
    scan = data.index(b"\xff\xda")  # start of scan, replaced by end of image
    no_scan = data[:scan] + b"\xff\xd9" + data[scan + 2:]
    assert decode_error(no_scan).startswith("truncated or corrupt image data (")
    assert decode_error(data[: len(data) // 2]).startswith("truncated or corrupt image data (")


def test_huge_dimensions_are_refused_before_any_pixel_is_made():
    message = decode_error(png_with_size(30000, 30000))
    assert message == (
        "image is 30000 x 30000 (900.0 megapixels), over the 50.0-megapixel limit"
    )


def test_our_pixel_limit_applies_below_pillows():
    assert decode_error(png_with_size(8000, 7000)) == (
        "image is 8000 x 7000 (56.0 megapixels), over the 50.0-megapixel limit"
    )
    assert MAX_PIXELS == 50_000_000
    assert decode_error(encode(RGB), max_pixels=400) == (
        "image is 20 x 24 (0.00048 megapixels), over the 0.0004-megapixel limit"
    )


def test_pillow_bomb_warning_and_error_become_decode_errors(monkeypatch):
    # with Pillow's own limit lowered, both its warning band and its error band must refuse
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warned = decode_error(encode(np.zeros((40, 40), np.uint8)), max_pixels=10**9)  # 1,600 px
    refused = decode_error(encode(np.zeros((64, 64), np.uint8)), max_pixels=10**9)  # 4,096 px
    assert warned.startswith("image is 40 x 40") and refused.startswith("image is 64 x 64")


def test_over_size_file_is_refused_before_reading(tmp_path):
    data = encode(RGB)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    for source in (data, path):
        message = decode_error(source, max_bytes=100)
        assert message == f"file is {len(data) / 1024:.1f} KB, over the 100 bytes limit"
    assert decode_error(b"x" * (3 * 2**20), max_bytes=2 * 2**20) == (
        "file is 3 MB, over the 2 MB limit"
    )


def test_missing_file_is_a_decode_error(tmp_path):
    assert decode_error(tmp_path / "gone.png").startswith("cannot read the file")


# --- convertible kinds --------------------------------------------------------------------------


def test_16_bit_grayscale_png_is_rounded_to_8_bits():
    values = np.array([[0, 128, 129, 385, 65535, 65407]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(values)))
    assert out.array.shape == (1, 6, 1)
    np.testing.assert_array_equal(out.array[0, :, 0], np.round(values[0] / 257))
    assert out.notes == ("16-bit image reduced to 8 bits",)


def test_16_bit_ppm_opened_as_mode_i_is_rounded_to_8_bits():
    values = np.array([[0, 300, 65535]], dtype=np.uint16)
    image = Image.open(io.BytesIO(encode(Image.fromarray(values), "PPM")))
    assert image.mode == "I"
    out = decode_image(encode(Image.fromarray(values), "PPM"))
    np.testing.assert_array_equal(out.array[0, :, 0], [0, 1, 255])
    assert out.notes == ("16-bit image reduced to 8 bits",)


def test_16_bit_rgb_png_gets_a_note():
    out = decode_image(png_16_bit_rgb(RNG.integers(0, 65536, (4, 5, 3))))
    assert out.array.shape == (4, 5, 3)
    assert out.notes == ("16-bit image reduced to 8 bits",)


def test_palette_image_expands_to_rgb():
    palette_image = Image.fromarray(RGB).quantize(16)
    out = decode_image(encode(palette_image))
    np.testing.assert_array_equal(out.array, np.asarray(palette_image.convert("RGB")))
    assert out.notes == ("palette image expanded to RGB",)


def test_grey_palette_expands_to_one_channel():
    grey = Image.fromarray(RGB[..., 0]).convert("RGB").quantize(8)
    out = decode_image(encode(grey))
    assert out.array.shape == (24, 20, 1)
    assert out.notes == ("palette image expanded to grayscale",)


def test_cmyk_jpeg_becomes_rgb():
    out = decode_image(encode(Image.fromarray(RGB).convert("CMYK"), "JPEG"))
    assert out.array.shape == (24, 20, 3)
    assert out.notes == ("CMYK image converted to RGB",)


def test_rgba_drops_alpha_and_keeps_colour_values():
    rgba = np.dstack([RGB, np.zeros((24, 20), np.uint8)])  # fully transparent
    out = decode_image(encode(rgba))
    np.testing.assert_array_equal(out.array, RGB)  # not composited on black
    assert out.notes == ("alpha channel dropped",)


def test_la_drops_alpha_to_one_channel():
    la = Image.merge("LA", [Image.fromarray(RGB[..., 0]), Image.fromarray(RGB[..., 1])])
    out = decode_image(encode(la))
    np.testing.assert_array_equal(out.array[..., 0], RGB[..., 0])
    assert out.array.shape == (24, 20, 1) and out.notes == ("alpha channel dropped",)


def test_one_bit_image_becomes_0_or_255():
    bits = Image.fromarray(RGB[..., 0] > 127)
    out = decode_image(encode(bits))
    assert out.array.shape == (24, 20, 1)
    np.testing.assert_array_equal(out.array[..., 0], np.where(RGB[..., 0] > 127, 255, 0))
    assert out.notes == ("1-bit image converted to 8-bit grayscale",)


def test_float_and_32_bit_tiffs_are_clipped():
    values = np.array([[-5.0, 0.4, 100.6, 300.0]], dtype=np.float32)
    out = decode_image(encode(Image.fromarray(values), "TIFF"))
    np.testing.assert_array_equal(out.array[0, :, 0], [0, 0, 101, 255])
    assert out.notes == ("32-bit float image converted to 8 bits by clipping to 0..255",)
    ints = decode_image(encode(Image.fromarray(np.array([[-1, 7, 70000]], np.int32)), "TIFF"))
    np.testing.assert_array_equal(ints.array[0, :, 0], [0, 7, 255])
    assert ints.notes == ("32-bit integer image converted to 8 bits by clipping to 0..255",)


def _frames() -> list[Image.Image]:
    return [Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)) for i in range(1, 4)]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_uses_the_first_frame(fmt):
    first, *rest = _frames()
    out = decode_image(encode(first, fmt, save_all=True, append_images=rest, lossless=True))
    assert out.array.shape[:2] == (8, 8)
    assert np.abs(out.array.astype(int) - 60).max() <= 1  # first frame (60), not a later one
    assert "animated image with 3 frames: only the first frame is used" in out.notes


def test_multi_page_tiff_uses_the_first_page():
    first, *rest = _frames()
    out = decode_image(encode(first, "TIFF", save_all=True, append_images=rest))
    assert out.array.max() == 60
    assert out.notes == ("multi-page image with 3 pages: only the first page is used",)

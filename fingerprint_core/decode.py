"""Safe decoding of one image file (a dataset file or a browser upload) into a uint8 array."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

# ImageFile.LOAD_TRUNCATED_IMAGES is never touched here: it must stay False, or Pillow would fill a
# truncated file with grey and report success.

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
MAX_PIXELS: int = 50_000_000  # per image; guards against decompression bombs
MAX_FILE_BYTES: int = 200 * 2**20

# What Pillow raises on broken data, besides its own classes.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

# Signatures of the formats we take, to say "a broken PNG" rather than "not an image".
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})


class DecodeError(ValueError):
    """A file that cannot be used as an image; str(err) is the plain reason (no file name)."""


class OverBudget(DecodeError):
    """Decoding the image would exceed the caller's budget of decoded pixel bytes."""

    def __init__(self, needed: int, left: int) -> None:
        super().__init__(f"decoding it needs {_size_text(needed)}, more than the {_size_text(max(left, 0))} left")
        self.needed, self.left = needed, left


# What an extension promises, to say when a file holds another format (a JPEG saved as .png).
_EXTENSION_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                      ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
JPEG_NOTE = ("JPEG-compressed: compression erases much of the traces a generator leaves, so this answer "
             "is less reliable than for a PNG (see the README's robustness results)")


def format_notes(actual: str | None, name: str | None) -> list[str]:
    """What a user should know about the file's real format: JPEG compression, a format its name hides."""
    notes = []
    ext = os.path.splitext(name or "")[1].lower()
    promised = _EXTENSION_FORMATS.get(ext)
    if actual and promised and actual != promised and not (actual == "MPO" and promised == "JPEG"):
        notes.append(f"the file holds {actual} data under a {ext} name")
    if actual in ("JPEG", "MPO"):
        notes.append(JPEG_NOTE)
    return notes


@dataclass(frozen=True)
class Decoded:
    """A decoded image and the conversions a user should know about."""

    array: np.ndarray  # uint8 (H, W, C), C in {1, 3}, C-contiguous
    notes: tuple[str, ...]  # plain sentences, e.g. "alpha channel dropped"


def _size_text(n_bytes: int) -> str:
    if n_bytes >= 2**20:
        text, unit = f"{n_bytes / 2**20:.1f}", "MB"
    elif n_bytes >= 2**10:
        text, unit = f"{n_bytes / 2**10:.1f}", "KB"
    else:
        return f"{n_bytes} bytes"
    return f"{text.removesuffix('.0')} {unit}"


def _sniff_format(head: bytes) -> str | None:
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        # a multi-byte character cut by the end of the sample is still text
        return err.start >= len(head) - 3
    return True


def _not_an_image_reason(head: bytes) -> str:
    if not head:
        return "not an image: the file is empty"
    if _looks_like_text(head):
        return "not an image: unrecognised file format (the file looks like text)"
    return "not an image: unrecognised file format"


def _header_size(fp: IO[bytes], fmt: str | None) -> tuple[int, int] | None:
    """The (width, height) a header declares, read without Pillow's bomb check; None if unknown."""
    if fmt is None:
        return None
    try:
        Image.init()
        factory = Image.OPEN[fmt][0]
        fp.seek(0)
        return tuple(factory(fp, "").size)  # type: ignore[return-value]
    except Exception:  # only used to word a message; any failure just loses the dimensions
        return None


def _megapixels(n_pixels: int) -> str:
    return f"{n_pixels / 1e6:.1f}" if n_pixels >= 100_000 else f"{n_pixels / 1e6:.2g}"


def _too_many_pixels(width: int, height: int, limit: int) -> DecodeError:
    return DecodeError(
        f"image is {width} x {height} ({_megapixels(width * height)} megapixels), "
        f"over the {_megapixels(limit)}-megapixel limit"
    )


def _reduce_16_bit(values: np.ndarray) -> np.ndarray:
    # round(v / 257) in integers: 0..65535 -> 0..255 exactly, no half-way ties exist
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _clip_to_8_bit(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _rgb_or_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W, 1) when all three channels agree (a grey palette), else unchanged."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., :1]
    return rgb


def _to_array(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Convert a loaded Pillow image to uint8 (H, W, C), appending a note for each lossy step."""
    mode = im.mode
    fmt = getattr(im, "format", None)
    if mode == "L":
        return np.asarray(im)[..., None]
    if mode in ("RGB", "RGBX"):
        return np.asarray(im.convert("RGB") if mode == "RGBX" else im)
    if mode.startswith("I;16"):
        notes.append("16-bit image reduced to 8 bits")
        return _reduce_16_bit(np.asarray(im))[..., None]
    if mode == "I":
        values = np.asarray(im)
        # PPM (and PNG in old Pillow) give 16-bit grey as "I"; other "I" files are 32-bit integers
        if fmt in ("PPM", "PNG") and values.min(initial=0) >= 0 and values.max(initial=0) <= 65535:
            notes.append("16-bit image reduced to 8 bits")
            return _reduce_16_bit(values)[..., None]
        notes.append("32-bit integer image converted to 8 bits by clipping to 0..255")
        return _clip_to_8_bit(values)[..., None]
    if mode == "F":
        notes.append("32-bit float image converted to 8 bits by clipping to 0..255")
        return _clip_to_8_bit(np.asarray(im))[..., None]
    if mode == "1":
        notes.append("1-bit image converted to 8-bit grayscale")
        return np.asarray(im.convert("L"))[..., None]
    if mode in ("LA", "La"):
        notes.append("alpha channel dropped")
        return np.asarray(im.getchannel(0))[..., None]
    if mode in ("RGBA", "RGBa"):
        notes.append("alpha channel dropped")
        return np.asarray(im.convert("RGB"))
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in im.info:
            notes.append("alpha channel dropped")
        # via RGBA so that no transparency handling of Pillow's alters the colour values
        array = _rgb_or_gray(np.asarray(im.convert("RGBA"))[..., :3])
        notes.append(
            "palette image expanded to grayscale" if array.shape[2] == 1
            else "palette image expanded to RGB"
        )
        return array
    try:
        rgb = im.convert("RGB")
    except ValueError as err:
        raise DecodeError(f"unsupported pixel mode {mode} ({err})") from None
    notes.append(f"{mode} image converted to RGB")
    return np.asarray(rgb)


def _decode(fp: IO[bytes], max_pixels: int, max_decoded_bytes: int | None = None, name: str | None = None) -> Decoded:
    head = fp.read(16)
    fp.seek(0)
    fmt = _sniff_format(head)
    notes: list[str] = []
    with warnings.catch_warnings():
        # Pillow only warns between its own limit and twice it; make that a refusal too
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Pillow's remarks on damaged metadata (EXIF and the like) are noise for our users
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        try:
            im = Image.open(fp)
        except UnidentifiedImageError:
            if fmt is not None:
                raise DecodeError(
                    f"truncated or corrupt image data (the {fmt} header is unreadable)"
                ) from None
            raise DecodeError(_not_an_image_reason(head)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            size = _header_size(fp, fmt)
            if size is None:
                raise DecodeError(f"image is too large to decode safely ({err})") from None
            limit = max_pixels if size[0] * size[1] > max_pixels else Image.MAX_IMAGE_PIXELS
            raise _too_many_pixels(*size, limit or max_pixels) from None
        except _PIL_ERRORS as err:
            raise DecodeError(f"truncated or corrupt image data ({err})") from None

        with im:
            width, height = im.size
            if width * height > max_pixels:
                raise _too_many_pixels(width, height, max_pixels)
            needed = width * height * (1 if im.mode in _GRAY_MODES else 3)  # the uint8 array it becomes
            if max_decoded_bytes is not None and needed > max_decoded_bytes:
                raise OverBudget(needed, max_decoded_bytes)  # checked from the header, before decoding
            if name is not None:  # uploads for attribution: a JPEG changes how far the answer holds
                notes += format_notes(im.format, name)
            try:
                n_frames = getattr(im, "n_frames", 1)
                if n_frames > 1:
                    im.seek(0)
                    if im.format in _ANIMATED_FORMATS:
                        notes.append(
                            f"animated image with {n_frames} frames: only the first frame is used"
                        )
                    else:
                        notes.append(
                            f"multi-page image with {n_frames} pages: only the first page is used"
                        )
                # Pillow keeps the high byte of 16-bit colour; the tile's raw mode tells
                if im.mode in ("RGB", "RGBA") and any(";16" in str(tile[3]) for tile in im.tile):
                    notes.append("16-bit image reduced to 8 bits")
                im.load()
                array = _to_array(im, notes)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
                raise DecodeError(f"image is too large to decode safely ({err})") from None
            except DecodeError:
                raise
            except _PIL_ERRORS as err:
                raise DecodeError(f"truncated or corrupt image data ({err})") from None
    return Decoded(array=np.ascontiguousarray(array, dtype=np.uint8), notes=tuple(notes))


def decode_image(
    source: bytes | str | os.PathLike,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    max_decoded_bytes: int | None = None,
    name: str | None = None,
) -> Decoded:
    """Decode one image (file path or bytes) to uint8 (H, W, 1|3), or raise DecodeError. With name (an
    upload's file name) the notes also say when it is JPEG data or not what its name says."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise DecodeError(
                f"file is {_size_text(len(data))}, over the {_size_text(max_bytes)} limit"
            )
        return _decode(io.BytesIO(data), max_pixels, max_decoded_bytes, name)
    try:
        n_bytes = os.stat(source).st_size
        if n_bytes > max_bytes:
            raise DecodeError(
                f"file is {_size_text(n_bytes)}, over the {_size_text(max_bytes)} limit"
            )
        with open(source, "rb") as fp:
            return _decode(fp, max_pixels, max_decoded_bytes, name)
    except OSError as err:
        raise DecodeError(f"cannot read the file ({err.strerror or err})") from None

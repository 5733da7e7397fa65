"""GM datasets (real images, model samples, design-choice table), image readers, Fashion-MNIST."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from platformdirs import user_cache_path

from fingerprint_core import decode

log = logging.getLogger(__name__)

# DESIGN.md section 4; add values only with a reason.
VOCABULARY: dict[str, frozenset[str]] = {
    "family": frozenset({"gan", "vae", "diffusion", "flow", "real"}),
    "upsampling": frozenset(
        {"transposed_conv", "nearest_conv", "bilinear_conv", "pixel_shuffle", "none"}
    ),
    "loss": frozenset(
        {"non_saturating", "hinge", "least_squares", "wasserstein_gp", "elbo", "denoising",
         "likelihood"}
    ),
    "normalization": frozenset({"batch", "instance", "group", "spectral", "none"}),
}
REQUIRED_COLUMNS = ("model", "family", "upsampling", "loss", "normalization")

_BLOCK = 2**20  # bytes per read (hashing, idx files, downloads)


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file/column/model."""


@dataclass(frozen=True)
class BadFile:
    """A file (or an array inside an npz) that was skipped, and why."""

    file: str  # relative to the dataset root (or the given path); "x.npz[key]" for an array
    reason: str


@dataclass
class ImageSet:
    """Images read from a folder or file, all converted to one shape."""

    images: np.ndarray  # uint8 (N, C, H, W)
    sources: list[str]  # one per image: relative file path, or "x.npz[i]"
    bad_files: list[BadFile]
    warnings: list[str]  # aggregated: one sentence per kind of conversion


# ---------------------------------------------------------------------------------------------
# Walking folders


def _walk_files(folder: Path, on_error: Callable[[str, OSError], None] | None = None
                ) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every file at any depth, dotfiles and dot-folders skipped."""
    found = []

    def report(err: OSError) -> None:
        if on_error is not None:
            rel = Path(err.filename).relative_to(folder).as_posix() if err.filename else "."
            on_error(rel, err)

    for dirpath, dirnames, filenames in os.walk(folder, onerror=report):
        # dot-folders hold tool state (.git, .ipynb_checkpoints), never data
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            # dotfiles include macOS "._x.png" resource forks, which are not images
            if not name.startswith("."):
                path = Path(dirpath, name)
                found.append((path.relative_to(folder).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return found


def _file_kind(name: str) -> str | None:
    """'npz' | 'idx' | 'image' by name, None for files a dataset folder may hold besides data."""
    lower = name.lower()
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith(("idx3-ubyte", "idx3-ubyte.gz")):
        return "idx"
    if os.path.splitext(lower)[1] in decode.IMAGE_EXTENSIONS:
        return "image"
    return None


# ---------------------------------------------------------------------------------------------
# Array files: idx (Fashion-MNIST) and npz


def _read_idx(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """An idx file of unsigned bytes (plain or .gz) as a uint8 array; ValueError with the reason."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fp:
            magic = fp.read(4)
            if len(magic) < 4 or magic[:2] != b"\x00\x00":
                raise ValueError("not an idx file (bad magic number)")
            if magic[2] != 0x08:
                raise ValueError(f"idx data type 0x{magic[2]:02x} is not unsigned bytes (0x08)")
            n_dims = magic[3]
            header = fp.read(4 * n_dims)
            if len(header) < 4 * n_dims:
                raise ValueError("truncated idx header")
            dims = tuple(int.from_bytes(header[4 * i:4 * i + 4], "big") for i in range(n_dims))
            if max_pixels is not None and n_dims == 3 and dims[1] * dims[2] > max_pixels:
                raise ValueError(
                    f"idx images are {dims[2]} x {dims[1]}, over the {_megapixels(max_pixels)}"
                )
            count = int(np.prod(dims, dtype=np.int64))
            # read in blocks, so a header that lies about the size cannot make us allocate it
            data = bytearray()
            while len(data) < count and (block := fp.read(min(16 * _BLOCK, count - len(data)))):
                data += block
            if len(data) < count:
                raise ValueError(f"truncated idx data ({len(data)} of {count} bytes)")
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"cannot read the idx file ({err})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _megapixels(n_pixels: int) -> str:
    return f"{n_pixels / 1e6:g}-megapixel limit"


def _layout(shape: tuple[int, ...]) -> tuple[Callable[[np.ndarray], np.ndarray], int, int] | None:
    """(function to (N, H, W, C), H, W) for an array of this shape; None for unusable shapes."""
    if len(shape) == 3:
        if shape[2] in (1, 3, 4) and shape[1] > 4:
            return None  # one H x W x C image, not N x H x W
        return (lambda a: a[..., None]), shape[1], shape[2]
    if len(shape) == 4:
        if shape[3] in (1, 3):
            return (lambda a: a), shape[1], shape[2]
        if shape[1] in (1, 3) and shape[2] > 4 and shape[3] > 4:
            return (lambda a: a.transpose(0, 2, 3, 1)), shape[2], shape[3]
    return None


_LAYOUTS_TEXT = "N x H x W, N x H x W x C or N x C x H x W with C 1 or 3"


def _npz_entries(path: Path, max_pixels: int) -> Iterator[tuple[str, np.ndarray | str]]:
    """(key, (N, H, W, C) uint8 array or the reason it is unusable) for each array, by key."""
    # zipfile + the .npy header let us refuse a wrong dtype or shape before reading any data
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".npy"))
        if not names:
            raise ValueError("the npz holds no arrays")
        for name in names:
            key = name[: -len(".npy")]
            with archive.open(name) as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            layout = _layout(shape)
            if dtype != np.uint8:
                yield key, f"array '{key}' is {dtype}; expected uint8 pixels (0..255)"
            elif layout is None:
                yield key, f"array '{key}' has shape {tuple(shape)}; expected {_LAYOUTS_TEXT}"
            elif layout[1] * layout[2] > max_pixels:
                yield key, (
                    f"array '{key}' holds {layout[2]} x {layout[1]} images, over the "
                    f"{_megapixels(max_pixels)}"
                )
            else:
                with archive.open(name) as fp:
                    yield key, layout[0](np.lib.format.read_array(fp, allow_pickle=False))


# ---------------------------------------------------------------------------------------------
# Collecting images of one shape


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


@dataclass
class _Collector:
    """Accumulates images, converting each to the target shape and counting the conversions."""

    label: str  # names the set in warnings, e.g. "models/dcgan"
    target: tuple[int, int, int] | None  # (C, H, W)
    batches: list[np.ndarray] = field(default_factory=list)  # each (n, C, H, W)
    sources: list[str] = field(default_factory=list)
    bad_files: list[BadFile] = field(default_factory=list)
    counts: dict[tuple, list] = field(default_factory=dict)  # kind -> [count, example source]

    def count(self, kind: tuple, source: str, n: int = 1) -> None:
        entry = self.counts.setdefault(kind, [0, source])
        entry[0] += n

    def add(self, batch: np.ndarray, sources: list[str]) -> None:
        """Add (n, H, W, C) uint8 images with one source each."""
        if len(batch) == 0:
            return
        height, width, channels = batch.shape[1:]
        if self.target is None:
            self.target = (channels, height, width)
        c, h, w = self.target
        if channels != c:
            self.count(("channels", channels, c), sources[0], len(batch))
        if (height, width) != (h, w):
            self.count(("size", width, height), sources[0], len(batch))
        if (channels, height, width) != self.target:
            batch = np.stack([self._convert(image) for image in batch])
        self.batches.append(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        self.sources.extend(sources)

    def _convert(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) -> target (H', W', C') with Pillow."""
        c, h, w = self.target
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        if image.shape[2] == 3 and c == 1:
            pil = pil.convert("L")  # ITU-R 601-2 luma
        if pil.size != (w, h):
            shrinks = w < pil.size[0] or h < pil.size[1]
            # LANCZOS anti-aliases when shrinking; BICUBIC is the usual choice when enlarging
            resample = Image.Resampling.LANCZOS if shrinks else Image.Resampling.BICUBIC
            pil = pil.resize((w, h), resample)
        out = np.asarray(pil)
        if out.ndim == 2:
            out = out[..., None]
        if out.shape[2] == 1 and c == 3:
            out = np.repeat(out, 3, axis=2)
        return out

    def warnings(self) -> list[str]:
        """One sentence per kind of note or conversion, with a count and an example."""
        lines = []
        c, h, w = self.target or (0, 0, 0)
        for kind, (n, example) in self.counts.items():
            if kind[0] == "note":
                lines.append(
                    f"{self.label}: {kind[1]} ({_plural(n, 'file', 'files')}, e.g. {example})"
                )
            elif kind[0] == "channels" and kind[2] == 1:
                were = "was" if n == 1 else "were"
                lines.append(
                    f"{self.label}: {_plural(n, 'image', 'images')} {were} RGB and {were} "
                    f"converted to grayscale (ITU-R 601-2 luma) (e.g. {example})"
                )
            elif kind[0] == "channels":
                were = "was" if n == 1 else "were"
                lines.append(
                    f"{self.label}: {_plural(n, 'image', 'images')} {were} grayscale and {were} "
                    f"repeated to 3 channels (RGB) (e.g. {example})"
                )
            else:
                were = "was" if n == 1 else "were"
                lines.append(
                    f"{self.label}: {_plural(n, 'image', 'images')} {were} {kind[1]} x {kind[2]} "
                    f"and {were} resized to {w} x {h}; resizing can erase high-frequency "
                    "artifacts (the fingerprint), so results for these images are less reliable "
                    f"(e.g. {example})"
                )
        return lines

    def result(self) -> ImageSet:
        if len(self.batches) == 1:
            images = self.batches.pop()
        elif self.batches:
            # one copy at a time, each batch let go once copied: the peak is the set plus one batch,
            # not twice the set (np.concatenate's)
            images = np.empty((sum(len(b) for b in self.batches), *self.batches[0].shape[1:]), np.uint8)
            at = 0
            while self.batches:
                batch = self.batches.pop(0)
                images[at : at + len(batch)] = batch
                at += len(batch)
                del batch
        else:
            images = np.zeros((0, *(self.target or (1, 1, 1))), dtype=np.uint8)
        return ImageSet(images, self.sources, self.bad_files, self.warnings())


def _read_one(collector: _Collector, path: Path, rel: str, kind: str | None,
              max_pixels: int) -> None:
    """Read one file into the collector, or record it as a bad file."""
    if kind == "npz":
        try:
            entries = list(_npz_entries(path, max_pixels))
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as err:
            collector.bad_files.append(BadFile(rel, f"not a readable npz file ({err})"))
            return
        except MemoryError:
            collector.bad_files.append(BadFile(rel, "the npz is too large to load into memory"))
            return
        single = len(entries) == 1
        for key, entry in entries:
            if isinstance(entry, str):
                collector.bad_files.append(BadFile(f"{rel}[{key}]", entry))
                continue
            prefix = rel if single else f"{rel}[{key}]"
            collector.add(entry, [f"{prefix}[{i}]" for i in range(len(entry))])
    elif kind == "idx":
        try:
            array = _read_idx(path, max_pixels)
        except ValueError as err:
            collector.bad_files.append(BadFile(rel, str(err)))
            return
        if array.ndim != 3:
            collector.bad_files.append(
                BadFile(rel, f"idx array has {array.ndim} dimensions; expected N x H x W images")
            )
            return
        collector.add(array[..., None], [f"{rel}[{i}]" for i in range(len(array))])
    else:
        try:
            decoded = decode.decode_image(path, max_pixels=max_pixels)
        except decode.DecodeError as err:
            collector.bad_files.append(BadFile(rel, str(err)))
            return
        for note in decoded.notes:
            collector.count(("note", note), rel)
        collector.add(decoded.array[None], [rel])


def _under_root(path: Path, root: Path | None) -> str | None:
    """path relative to root (posix), or None when there is no root or path is not under it."""
    if root is None:
        return None
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return None
    return None if rel == "." else rel


def read_images(
    path: str | os.PathLike,
    *,
    shape: tuple[int, int, int] | None = None,
    max_pixels: int = decode.MAX_PIXELS,
    root: str | os.PathLike | None = None,
) -> ImageSet:
    """Read every image under a folder (or one image, npz or idx file) into uint8 (N, C, H, W)."""
    path = Path(path)
    root = Path(root) if root is not None else None
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or shape[0] not in (1, 3) or shape[1] < 1 or shape[2] < 1:
            raise ValueError(f"shape={shape} must be (C, H, W) with C 1 or 3 and H, W >= 1")
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    rel_to_root = _under_root(path, root)
    # path.name is empty for "." and the like
    name = path.name or path.resolve().name or path.as_posix()
    collector = _Collector(label=rel_to_root or name, target=shape)
    if path.is_dir():
        prefix = f"{rel_to_root}/" if rel_to_root else ""

        def unreadable(rel: str, err: OSError) -> None:
            collector.bad_files.append(
                BadFile(prefix + rel, f"cannot read the folder ({err.strerror or err})")
            )

        for rel, file in _walk_files(path, on_error=unreadable):
            kind = _file_kind(file.name)
            if kind is not None:  # README.txt and the like are not data
                _read_one(collector, file, prefix + rel, kind, max_pixels)
    else:
        # a file named explicitly is read whatever its extension; decoding sniffs the content
        _read_one(collector, path, rel_to_root or name, _file_kind(path.name), max_pixels)
    return collector.result()


# ---------------------------------------------------------------------------------------------
# GM dataset


@dataclass
class GMDataset:
    """A GM dataset on disk: real images, one folder per model, and the design-choice table."""

    root: Path
    design: pd.DataFrame  # one row per model; REQUIRED_COLUMNS first, then any others; strings
    warnings: list[str]

    def model_names(self) -> list[str]:
        """The models, in models.csv order."""
        return list(self.design["model"])

    def model_dir(self, name: str) -> Path:
        """The folder of one model's samples."""
        if name not in set(self.design["model"]):
            raise DatasetError(f"unknown model '{name}' (models: {', '.join(self.model_names())})")
        return self.root / "models" / name

    def real_dir(self) -> Path | None:
        """The folder of real images, or None when the dataset has none."""
        real = self.root / "real"
        return real if real.is_dir() else None


def _first_and_more(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{items[0]} (and {len(items) - 1} more)"


def _read_design(csv_path: Path) -> pd.DataFrame:
    """models.csv as stripped strings, REQUIRED_COLUMNS first; DatasetError when unusable."""
    try:
        # utf-8-sig: spreadsheet programs often start the file with a byte-order mark
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DatasetError("models.csv is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise DatasetError(f"models.csv cannot be read ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    duplicated = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if duplicated:
        raise DatasetError(f"models.csv has the column '{duplicated[0]}' more than once")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise DatasetError(
            f"models.csv has no column{'s' if len(missing) > 1 else ''} {names} "
            f"(required: {', '.join(REQUIRED_COLUMNS)})"
        )
    if table.empty:
        raise DatasetError("models.csv lists no models")
    table = table.apply(lambda column: column.str.strip())
    others = [c for c in table.columns if c not in REQUIRED_COLUMNS]
    table = table[list(REQUIRED_COLUMNS) + others].reset_index(drop=True)

    names = list(table["model"])
    empty = [str(i + 1) for i, name in enumerate(names) if not name]
    if empty:
        raise DatasetError(f"models.csv: row {_first_and_more(empty)} has an empty model name")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            rows = f"rows {seen[name] + 1} and {i + 1}"
            raise DatasetError(f"models.csv lists model '{name}' more than once ({rows})")
        seen[name] = i
    return table


def _vocabulary_warnings(design: pd.DataFrame) -> list[str]:
    lines = []
    for column, allowed in VOCABULARY.items():
        for model, value in zip(design["model"], design[column], strict=True):
            if value not in allowed:
                hint = f"; did you mean '{value.lower()}'?" if value.lower() in allowed else ""
                lines.append(
                    f"models.csv: model '{model}' has {column} '{value}', which is not in the "
                    f"vocabulary (allowed: {', '.join(sorted(allowed))}){hint}"
                )
    return lines


def open_dataset(root: str | os.PathLike, *, require_real: bool = True) -> GMDataset:
    """Open and check a GM dataset folder (real/, models/<name>/, models.csv); reads no image."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; a GM dataset is a folder")
    csv_path = root / "models.csv"
    if not csv_path.is_file():
        raise DatasetError(
            f"{root} has no models.csv (columns: {', '.join(REQUIRED_COLUMNS)}[, any others])"
        )
    design = _read_design(csv_path)

    models_dir = root / "models"
    folders = sorted(
        p.name for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    ) if models_dir.is_dir() else []
    # compare names, never build paths from the table: a row like "../real" must not match
    listed = set(design["model"])
    without_row = [f"models/{name}" for name in folders if name not in listed]
    if without_row:
        raise DatasetError(f"{_first_and_more(without_row)} has no row in models.csv")
    folder_set = set(folders)
    without_folder = [name for name in design["model"] if name not in folder_set]
    if without_folder:
        more = f" (and {len(without_folder) - 1} more)" if len(without_folder) > 1 else ""
        name = without_folder[0]
        raise DatasetError(
            f"models.csv lists '{name}' but there is no folder models/{name}{more}"
        )
    if require_real and not (root / "real").is_dir():
        raise DatasetError(
            f"{root} has no real/ folder (the real images that estimate the data manifold)"
        )
    return GMDataset(root=root, design=design, warnings=_vocabulary_warnings(design))


# ---------------------------------------------------------------------------------------------
# Content hashing


def _file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while block := fp.read(_BLOCK):
            digest.update(block)
    return digest.digest()


def content_hash(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's or folder's content: relative paths and bytes, dotfiles skipped."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    # a single file is hashed under the empty name, so renaming it keeps its hash
    files = _walk_files(path) if path.is_dir() else [("", path)]
    digest = hashlib.sha256()
    for rel, file in files:
        # the name, a separator no path contains, then a fixed-size digest: no ambiguity
        digest.update(rel.encode("utf-8") + b"\x00" + _file_sha256(file))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (the demo's real data, DESIGN.md section 5)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# sha256 of the decompressed files, so a re-compressed copy still verifies
_FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_FASHION_MNIST_MIRROR = "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion"


def fashion_mnist_cache_dir() -> Path:
    """The user-cache copy's folder: <user cache>/manifpt/fashion-mnist ($XDG_CACHE_HOME or ~/.cache on Linux)."""
    return user_cache_path("manifpt", appauthor=False) / "fashion-mnist"


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _missing_fashion_mnist_files(folder: Path) -> list[str]:
    stems = [stem for pair in _FASHION_MNIST_FILES.values() for stem in pair]
    return [stem for stem in stems if _idx_file(folder, stem) is None]


def find_fashion_mnist() -> Path:
    """The folder holding Fashion-MNIST: $FASHION_MNIST_DIR, the system copy, or the user cache."""
    env = os.environ.get("FASHION_MNIST_DIR")
    if env:
        folder = Path(env).expanduser()
        missing = _missing_fashion_mnist_files(folder)
        if missing:  # a wrong setting is an error, not a reason to look elsewhere
            raise DatasetError(
                f"FASHION_MNIST_DIR={env} does not hold Fashion-MNIST: {missing[0]}[.gz] is missing"
            )
        return folder
    candidates = [SYSTEM_FASHION_MNIST_DIR, fashion_mnist_cache_dir()]
    for folder in candidates:
        if not _missing_fashion_mnist_files(folder):
            return folder
    raise DatasetError(
        "Fashion-MNIST was not found (looked in " + ", ".join(map(str, candidates)) + "). "
        "Install it with `apt-get install dataset-fashion-mnist`, or set FASHION_MNIST_DIR to a "
        "folder with the four idx files, or, if you are online, run "
        "`python -m fingerprint_core.datasets download`."
    )


def load_fashion_mnist(
    split: str = "train", *, pad_to: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as uint8 images (N, 1, pad_to, pad_to), zero-padded evenly, int64 labels."""
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"split={split!r}: expected one of {', '.join(_FASHION_MNIST_FILES)}")
    folder = find_fashion_mnist()
    images_stem, labels_stem = _FASHION_MNIST_FILES[split]
    arrays = []
    for stem in (images_stem, labels_stem):
        file = _idx_file(folder, stem)
        try:
            arrays.append(_read_idx(file))
        except ValueError as err:
            raise DatasetError(f"{file}: {err}") from None
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{folder}: {split} labels go up to {labels.max()}; expected 0..9")
    height, width = images.shape[1:]
    if pad_to < max(height, width):
        raise ValueError(f"pad_to={pad_to} must be at least the image size {height} x {width}")
    # even padding keeps the garment centred (28 -> 32: 2 px each side); an odd remainder goes
    # to the bottom/right
    top, left = (pad_to - height) // 2, (pad_to - width) // 2
    out = np.zeros((len(images), 1, pad_to, pad_to), dtype=np.uint8)
    out[:, 0, top:top + height, left:left + width] = images
    return out, labels.astype(np.int64)


def _gz_content_sha256(path: Path) -> str:
    """sha256 of a .gz file's decompressed content; "unreadable" for a broken file."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fp:
            while block := fp.read(_BLOCK):
                digest.update(block)
    except (OSError, EOFError, zlib.error):
        return "unreadable"
    return digest.hexdigest()


def download_fashion_mnist(dest: Path | None = None) -> Path:
    """Download Fashion-MNIST from its public mirror (default dest: the user cache); online only."""
    dest = Path(dest) if dest is not None else fashion_mnist_cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for stem, expected in _FASHION_MNIST_SHA256.items():
        target = dest / f"{stem}.gz"
        if target.is_file() and _gz_content_sha256(target) == expected:
            continue
        url = f"{_FASHION_MNIST_MIRROR}/{stem}.gz"
        log.info("downloading %s", url)
        # write to a temporary name and rename, so an interrupted download leaves nothing behind
        handle, name = tempfile.mkstemp(dir=dest, prefix=f".{stem}.", suffix=".part")
        tmp_path = Path(name)
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                while block := resp.read(_BLOCK):
                    out.write(block)
            actual = _gz_content_sha256(tmp_path)
            if actual != expected:
                raise DatasetError(f"{url} did not verify (sha256 of its content: {actual})")
            os.replace(tmp_path, target)
        except (urllib.error.URLError, OSError) as err:
            raise DatasetError(f"downloading {url} failed ({err})") from None
        finally:
            tmp_path.unlink(missing_ok=True)  # nothing left once renamed
    return dest


def main(argv: list[str] | None = None) -> None:
    """`python -m fingerprint_core.datasets download [--dest DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m fingerprint_core.datasets")
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download", help="download Fashion-MNIST (needs the internet)")
    download.add_argument("--dest", type=Path, default=None,
                          help=f"target folder (default: {fashion_mnist_cache_dir()})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = download_fashion_mnist(args.dest)
    except DatasetError as err:
        parser.exit(1, f"error: {err}\n")
    print(folder)


if __name__ == "__main__":
    main()

"""Read what a user hands in for attribution: image files, folders and zip archives, from disk
(the CLI) or from memory (the app: uploads never touch the server's disk).

Safe by construction: an archive is read in memory, never extracted; a member whose name could
escape a folder (../, an absolute name) or that is a symbolic link is refused, and so are nested
archives; member count and unpacked size are capped (the declared sizes are checked first, then the
bytes actually read are counted, so a lying header cannot exceed the limit). Every problem becomes
a (file, reason) pair; the good files are read all the same.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from fingerprint_core import decode
from fingerprint_core.fsio import sha256_file

ARCHIVE_EXTENSIONS = (".zip",)
OTHER_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".gz", ".bz2", ".xz", ".7z", ".rar")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_READ_BLOCK = 2**20


DECODED_ENV = "MANIFPT_MAX_DECODED_MB"
DEFAULT_DECODED_MB = 256  # 50 images of 1024 x 1024 x 3 decode to 150 MiB


def default_decoded_bytes() -> int:
    """The budget on the decoded pixels of one call: $MANIFPT_MAX_DECODED_MB, else 256 MiB."""
    try:
        return int(float(os.environ.get(DECODED_ENV, DEFAULT_DECODED_MB)) * 2**20)
    except ValueError:
        return DEFAULT_DECODED_MB * 2**20


@dataclass(frozen=True)
class Limits:
    """Caps on one call: files read, per archive its entries and unpacked bytes, and the decoded pixels
    of everything together (what the images take in memory, checked from each header before decoding)."""

    max_files: int = 10_000  # images read in one call, every folder and archive together
    max_members: int = 10_000  # entries of one archive
    max_archive_bytes: int = 2**30  # unpacked bytes of one archive (1 GiB)
    max_file_bytes: int = decode.MAX_FILE_BYTES  # one image file
    max_pixels: int = decode.MAX_PIXELS  # one image
    max_decoded_bytes: int = field(default_factory=default_decoded_bytes)  # every image of the call together


@dataclass(frozen=True)
class Upload:
    """One decoded image and the conversions made on the way."""

    name: str  # as the user knows it: a path, an upload's name, "archive.zip/inner/x.png"
    array: np.ndarray = field(repr=False)  # uint8 (H, W, C), C in {1, 3}
    notes: tuple[str, ...] = ()
    sha256: str = ""  # of the file's bytes as read (an archive member's own bytes), for the report


@dataclass
class Batch:
    """What a call read: the decoded images and, per refused file, the reason."""

    images: list[Upload] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def _size_text(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _is_other_archive(name: str) -> bool:
    return name.lower().endswith(OTHER_ARCHIVES)


class _Reader:
    """Accumulates a Batch, enforcing the per-call file limit."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.batch = Batch()
        self._full_reported = False
        self.decoded = 0  # bytes of the decoded images so far

    def error(self, name: str, reason: str) -> None:
        self.batch.errors.append((name, reason))

    def room(self, name: str) -> bool:
        if len(self.batch.images) < self.limits.max_files:
            return True
        if not self._full_reported:
            self.error(name, f"not read: the limit of {self.limits.max_files} images per call was reached")
            self._full_reported = True
        return False

    def image(self, name: str, data: bytes | os.PathLike) -> None:
        """Decode one image (bytes or a path) into the batch, or record why not."""
        if not self.room(name):
            return
        budget = self.limits.max_decoded_bytes
        try:
            d = decode.decode_image(data, max_pixels=self.limits.max_pixels, max_bytes=self.limits.max_file_bytes,
                                    max_decoded_bytes=budget - self.decoded, name=name)
        except decode.OverBudget as err:
            self.error(name, f"not read: {err} of this call's budget of {decode._size_text(budget)} for decoded images "
                             f"(set {DECODED_ENV} to change it)")
            return
        except decode.DecodeError as err:
            self.error(name, str(err))
            return
        self.decoded += d.array.nbytes
        digest = hashlib.sha256(data).hexdigest() if isinstance(data, bytes | bytearray) else sha256_file(Path(data))
        self.batch.images.append(Upload(name, d.array, d.notes, digest))

    # ---- archives ---------------------------------------------------------------------------
    def archive(self, name: str, source: bytes | Path) -> None:
        """Read every image of a zip archive (bytes or path) in memory."""
        try:
            zf = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
            self.error(name, f"not a readable zip archive ({err})")
            return
        with zf:
            infos = zf.infolist()
            if len(infos) > self.limits.max_members:
                self.error(name, f"archive has {len(infos)} entries, over the limit of {self.limits.max_members}; "
                                 "nothing was read from it")
                return
            declared = sum(i.file_size for i in infos)
            if declared > self.limits.max_archive_bytes:
                self.error(name, f"archive unpacks to {_size_text(declared)}, over the limit of "
                                 f"{_size_text(self.limits.max_archive_bytes)}; nothing was read from it")
                return
            budget = [self.limits.max_archive_bytes]  # bytes left for this archive, counted while reading
            for info in infos:
                if budget[0] < 0:
                    break
                self._member(zf, name, info, budget)

    def _member(self, zf: zipfile.ZipFile, archive: str, info: zipfile.ZipInfo, budget: list[int]) -> None:
        raw = info.filename
        shown = f"{archive}/{raw}"
        problem = _unsafe_member(info)
        if problem:
            self.error(shown, problem)
            return
        parts = PurePosixPath(raw.replace("\\", "/")).parts
        if info.is_dir() or not parts:
            return
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            return  # tool state and macOS resource forks, never images
        lower = raw.lower()
        if lower.endswith(ARCHIVE_EXTENSIONS) or _is_other_archive(lower):
            self.error(shown, "nested archive: archives inside an archive are not opened")
            return
        if os.path.splitext(lower)[1] not in decode.IMAGE_EXTENSIONS:
            self.error(shown, f"not an image file (extension {os.path.splitext(raw)[1] or 'none'}); skipped")
            return
        if info.flag_bits & 0x1:
            self.error(shown, "encrypted archive member; cannot be read")
            return
        if info.file_size > self.limits.max_file_bytes:
            self.error(shown, f"file is {_size_text(info.file_size)}, over the {_size_text(self.limits.max_file_bytes)} limit")
            return
        if not self.room(shown):
            return
        data = bytearray()
        try:
            with zf.open(info) as fp:
                while block := fp.read(_READ_BLOCK):
                    data += block
                    # count what is really unpacked: a header may lie about the size
                    if len(data) > info.file_size:
                        self.error(shown, "archive member holds more data than its header declares; refused")
                        return
                    if len(data) > budget[0]:
                        self.error(shown, f"archive unpacks to more than {_size_text(self.limits.max_archive_bytes)}; "
                                          "the rest of it was not read")
                        budget[0] = -1
                        return
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as err:
            self.error(shown, f"corrupt archive member ({err})")
            return
        budget[0] -= len(data)
        if data[:4] in _ZIP_MAGIC:
            self.error(shown, "nested archive: archives inside an archive are not opened")
            return
        self.image(shown, bytes(data))

    # ---- folders ----------------------------------------------------------------------------
    def folder(self, root: Path) -> None:
        """Every image (and zip) under a folder, at any depth; symbolic links are not followed."""
        entries = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for d in links:
                self.error(os.path.join(dirpath, d), "symbolic link: not followed")
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in links)
            entries += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
        for path in sorted(entries):
            self.path(path, in_folder=True)

    def path(self, path: Path, *, in_folder: bool = False) -> None:
        """One path: a folder, a zip, an image; symbolic links inside folders are refused."""
        name = str(path)
        try:
            st = os.lstat(path)
        except OSError as err:
            self.error(name, f"cannot read the file ({err.strerror or err})")
            return
        if stat.S_ISLNK(st.st_mode):
            if in_folder:
                self.error(name, "symbolic link: not followed")
                return
            try:
                st = os.stat(path)  # a link the user named on purpose
            except OSError as err:
                self.error(name, f"cannot read the file ({err.strerror or err})")
                return
        if stat.S_ISDIR(st.st_mode):
            self.folder(path)
            return
        if not stat.S_ISREG(st.st_mode):
            self.error(name, "not a regular file")
            return
        lower = name.lower()
        if lower.endswith(ARCHIVE_EXTENSIONS):
            self.archive(name, path)
        elif _is_other_archive(lower):
            self.error(name, "only zip archives are read (not tar, gz, 7z or rar)")
        elif in_folder and os.path.splitext(lower)[1] not in decode.IMAGE_EXTENSIONS:
            self.error(name, f"not an image file (extension {os.path.splitext(name)[1] or 'none'}); skipped")
        else:
            self.image(name, path)


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why an archive member is refused before reading it (unsafe name or a link), else None."""
    raw = info.filename
    name = raw.replace("\\", "/")
    if "\x00" in raw:
        return "unsafe name in archive (contains a NUL byte); refused"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "unsafe path in archive (an absolute name); refused"
    if ".." in name.split("/"):
        return "unsafe path in archive (../ leads outside the archive); refused"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link in archive: not followed"
    return None


def read_uploads(items: Iterable[tuple[str, bytes]], *, limits: Limits = Limits()) -> Batch:
    """Decode in-memory uploads (name, bytes): images or zip archives; nothing is written to disk."""
    reader = _Reader(limits)
    for name, data in items:
        data = bytes(data)
        lower = name.lower()
        if lower.endswith(ARCHIVE_EXTENSIONS) or data[:4] in _ZIP_MAGIC:
            reader.archive(name, data)
        elif _is_other_archive(lower):
            reader.error(name, "only zip archives are read (not tar, gz, 7z or rar)")
        else:
            reader.image(name, data)
    return reader.batch


def read_paths(paths: Iterable[str | os.PathLike], *, limits: Limits = Limits()) -> Batch:
    """Decode image files, folders (any depth) and zip archives given as paths."""
    reader = _Reader(limits)
    for p in paths:
        reader.path(Path(p))
    return reader.batch

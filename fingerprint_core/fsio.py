"""Durable file writes: one helper for every file the project writes (write, fsync, rename, fsync the folder)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_PATTERN = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")  # what tmp_name makes; the clean-up removes only these


def tmp_name(path: Path) -> Path:
    """A hidden temporary sibling of path (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened (Windows)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HashingWriter:
    """A binary file wrapper that hashes and counts what passes through (np.save and parquet write into it)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += len(view)
        return self.f.write(view)

    def flush(self) -> None:
        self.f.flush()

    def tell(self) -> int:
        return self.size

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self.f.closed


class DurableFile:
    """A file written in pieces, hashed and counted as it goes; close() flushes and fsyncs it.

    What write_durable does for one call, for writers that fill a file chunk by chunk (an entry's
    .npy streams) and never hold all of it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "wb")  # noqa: SIM115  (closed by close() or abort())
        self._w = HashingWriter(self._f)

    @property
    def size(self) -> int:
        return self._w.size

    @property
    def writer(self) -> HashingWriter:
        return self._w

    def write(self, data) -> int:
        return self._w.write(data)

    def close(self) -> tuple[int, str]:
        """Flush, fsync and close; returns (size, sha256)."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self._w.size, self._w.sha256.hexdigest()

    def abort(self) -> None:
        """Close without syncing (the caller removes the file or its folder)."""
        if not self._f.closed:
            self._f.close()


def npy_header(shape: tuple[int, ...], dtype) -> bytes:
    """The header np.save writes for a C-ordered array of this shape and dtype (format 1.0, else 2.0),
    so a .npy streamed as header + rows has np.save's bytes exactly."""
    import numpy as np

    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # a header over 64 KiB (a very long shape or a large structured dtype)
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def write_durable(path: Path, data: bytes | Callable[[HashingWriter], None]) -> tuple[int, str]:
    """Write path in place and fsync it; data is bytes or a function that writes into the file. Returns (size, sha256)."""
    f = DurableFile(path)
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            f.write(data)
        else:
            data(f.writer)
    except BaseException:
        f.abort()
        raise
    return f.close()


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[HashingWriter], None]) -> tuple[int, str]:
    """Write a file under a temporary name, fsync it, rename it into place, fsync the folder; returns (size, sha256)."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        out = write_durable(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return out


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_inside(path: Path, root: Path) -> bool:
    """Whether path lies inside root and no folder between them (nor path itself) is a symbolic link."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    if ".." in rel.parts:
        return False
    p = root
    for part in rel.parts:
        p = p / part
        if p.is_symlink():
            return False
    return True

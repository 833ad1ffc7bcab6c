"""Reading files moeplace did not write: JSON, ``.npy`` and ``.npz``, trusted for nothing.

Nothing is unpickled (``allow_pickle=False``), and no claim is believed before it is checked: an
``.npy`` header can claim any shape and numpy allocates what it claims before reading a byte; a
zip member can inflate a thousandfold; JSON can nest until the parser's stack runs out. Each reader
compares the claim with the bytes that are really there and raises ``MoeplaceError`` (the caller
adds the file's name) before anything is allocated, so memory stays proportional to the input.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from moeplace.errors import MoeplaceError, file_error

# What zipfile and zlib raise for damaged archives: bad headers, unsupported features it was told
# of (encryption, versions), streams that do not inflate or end early.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)
MAX_TEXT_BYTES = 1 << 30  # a placement, config or permutation file is kilobytes to megabytes
# A zip member larger than BOMB_FLOOR is refused when its archive inflates past this many times
# its compressed size: routing arrays compress 2-4x and whole archives 2-5x, but one member may
# compress ~700x (the set counts of a large trace, nearly all 1), so the ratio is the archive's.
# Memory stays within MAX_INFLATION x the archive's bytes.
MAX_INFLATION = 200
BOMB_FLOOR = 1 << 26


def check_regular_file(path: Path) -> None:
    """Raise ``MoeplaceError`` naming ``path`` unless it is a regular file (a FIFO or a device
    would block or never end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise file_error(path, "no such file") from None
    except OSError as exc:
        raise file_error(path, f"unreadable ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device?)"
        raise file_error(path, f"is {kind}; give a file")


def read_text(path: Path, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``; ``MoeplaceError`` naming it else."""
    check_regular_file(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise file_error(path, f"{size:,} bytes is larger than any file of this kind ({max_bytes:,})")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise file_error(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise file_error(path, f"unreadable ({exc.strerror or exc})") from None


def loads_json(text: str | bytes, what: str) -> Any:
    """``json.loads`` that reports bad, deeply nested or absurd JSON as one ``MoeplaceError``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MoeplaceError(f"{what} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise MoeplaceError(f"{what} nests too deeply to be what it claims") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise MoeplaceError(f"{what} is not valid JSON ({exc})") from None


def _header(stream, available: int, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length of the ``.npy`` in ``stream``, whose data may hold at most
    ``available`` bytes; refuses object arrays and shapes the bytes cannot hold."""
    try:
        npy = np.lib.format
        version = npy.read_magic(stream)
        shape, _, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(
            stream
        )
    except (ValueError, OSError, EOFError) as exc:
        raise MoeplaceError(f"{what} is not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise MoeplaceError(f"{what} holds pickled objects; refusing to unpickle untrusted data")
    claimed = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
    offset = stream.tell()
    if claimed > available - offset:
        raise MoeplaceError(
            f"{what} claims {shape} of {dtype} ({claimed:,} bytes) but holds {max(available - offset, 0):,}"
        )
    return shape, dtype, offset


def load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """An ``.npy`` file whose header is checked against the file's size first."""
    with open(path, "rb") as stream:
        _header(stream, path.stat().st_size, path.name)
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def load_npy_bytes(data: bytes, what: str) -> np.ndarray:
    """An ``.npy`` held in ``data`` (such as a decoded base64 string), its header checked first."""
    stream = io.BytesIO(data)
    _header(stream, len(data), what)
    stream.seek(0)
    return np.lib.format.read_array(stream, allow_pickle=False)


class Npz:
    """The arrays of an ``.npz``, read one at a time, each checked before it is inflated."""

    def __init__(self, archive: zipfile.ZipFile):
        self._zip = archive
        self.files = [n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")]
        members = archive.infolist()
        self._inflated = sum(info.file_size for info in members)
        self._compressed = sum(info.compress_size for info in members)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._read(name)
        except ZIP_ERRORS as exc:  # a damaged member
            raise MoeplaceError(f"{name}.npy is damaged ({type(exc).__name__}: {exc})") from None

    def _read(self, name: str) -> np.ndarray:
        info = self._zip.getinfo(f"{name}.npy")
        if info.file_size > BOMB_FLOOR and self._inflated > MAX_INFLATION * max(self._compressed, 1):
            raise MoeplaceError(
                f"{name}.npy inflates to {info.file_size:,} bytes, the archive from {self._compressed:,} "
                f"to {self._inflated:,}: not routing data (a decompression bomb?)"
            )
        with self._zip.open(info) as member:
            _header(member, info.file_size, f"{name}.npy")
        with self._zip.open(info) as member:  # zipfile checks the CRC of what it inflates
            return np.lib.format.read_array(member, allow_pickle=False)


@contextlib.contextmanager
def open_npz(path: Path) -> Iterator[Npz]:
    """``Npz`` over the archive at ``path``; an archive that is not one raises ``MoeplaceError``."""
    try:
        archive = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise MoeplaceError(f"not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    with archive:
        yield Npz(archive)

"""Atomic writes: a failing or interrupted run leaves any earlier output intact, and no output
ever takes the place of an input."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from moeplace.errors import file_error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success rename it over ``path``.

    The temporary file lives in the same directory, so the final ``os.replace`` is atomic.
    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    check_output_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(path, f"cannot create its folder ({exc.strerror or exc})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise file_error(path, f"cannot write it ({exc.strerror or exc})") from None
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give outputs the usual permissions
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full or read-only filesystem, a vanished folder
            raise file_error(path, f"cannot write it ({exc.strerror or exc})") from None
        raise


def check_distinct(
    inputs: Iterable[str | os.PathLike | None], outputs: Iterable[str | os.PathLike | None]
) -> None:
    """Raise ``MoeplaceError`` if an output would replace or write into an input (the same file,
    through a symlink or a hard link; an input inside an output directory; an output inside an
    input directory) or another output of the same command. Commands call it before any work."""
    inputs = [Path(p) for p in inputs if p is not None]
    outputs = [Path(p) for p in outputs if p is not None]
    for index, output in enumerate(outputs):
        for other in outputs[:index]:
            if _same(output, other) or _inside(output, other) or _inside(other, output):
                raise file_error(output, f"is given as two outputs ({other} too); each needs its own path")
        for source in inputs:
            if _same(output, source):
                raise file_error(output, f"is also an input ({source}); writing it would destroy the input")
            if _inside(source, output):
                raise file_error(output, f"holds the input {source}; writing it would destroy the input")
            if _inside(output, source):
                raise file_error(output, f"lies inside the input {source}; write the output elsewhere")


def check_unique(inputs: Iterable[str | os.PathLike]) -> None:
    """Raise ``MoeplaceError`` if one file is given twice (by path, symlink or hard link): its
    documents would be counted twice, and a later split could put one on both sides."""
    inputs = [Path(p) for p in inputs]
    for index, path in enumerate(inputs):
        for other in inputs[:index]:
            if _same(path, other):
                raise file_error(path, f"is given twice ({other}); each input once")


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _inside(path: Path, directory: Path) -> bool:
    """Does ``path`` resolve to somewhere below ``directory``?"""
    return os.path.realpath(path).startswith(os.path.realpath(directory).rstrip(os.sep) + os.sep)


def check_output_file(path: str | os.PathLike) -> None:
    """Raise ``MoeplaceError`` unless ``path`` can become a file: not a directory, and its folder
    exists, or can be made, and is writable. Commands call it before long work, so a typo fails in
    seconds; nothing is created until the output is written."""
    path = Path(path)
    if path.is_dir():
        raise file_error(path, "is a directory; give a file path for this output")
    _check_writable_parent(path)


def _check_writable_parent(path: Path) -> None:
    """The nearest existing folder above ``path`` must be a directory this process can write in."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise file_error(path, f"cannot create its folder: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise file_error(path, f"cannot write in {ancestor} (permission denied)")


def check_output_dir(path: str | os.PathLike) -> None:
    """Raise ``MoeplaceError`` unless ``path`` is a directory or can become one (checked before
    long work, like ``check_output_file``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise file_error(path, "exists and is not a directory; give a directory for these outputs")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise file_error(path, "cannot write in this directory (permission denied)")
    _check_writable_parent(path)


@contextlib.contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A folder for several outputs, made if missing; if the block fails and the folder was made
    here, it goes again, so a failed run leaves no empty or partial folder behind."""
    path = Path(path)
    made = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(path, f"cannot create this directory ({exc.strerror or exc})") from None
    try:
        yield path
    except BaseException:
        if made:
            shutil.rmtree(path, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replaceable=lambda p: False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it takes the place of ``path``.

    An existing ``path`` is replaced only if ``replaceable(path)`` says it is ours to replace
    (so a typo never deletes a user's directory); it is moved aside first and removed only once
    the new directory is in place.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and replaceable(path)):
        raise file_error(path, "exists and is not an output of this kind; not replacing it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise file_error(path, f"cannot write it ({exc.strerror or exc})") from None
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise file_error(path, f"cannot write it ({exc.strerror or exc})") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

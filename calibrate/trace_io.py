"""Reading and writing traces: moeplace's own directory format and the ``.npz`` interchange form.

Own format (a directory, for traces of any size; arrays are memory-mapped, so reads are chunked)::

    meta.json        {"format": "moeplace-trace", "version": 1, "num_tokens", "num_documents",
                      "model", "num_experts", "top_k", "layer_ids", "phase", "source", ...}
    topk_ids.npy     int16 [T, L, k]
    doc_offsets.npy  int64 [D+1]
    doc_labels.npy   unicode [D]

Interchange (``*.npz``, as in the shared traces): ``topk_ids``, ``doc_offsets``, ``doc_labels``,
``meta_json``. Both load with ``allow_pickle=False``: nothing in a trace file is ever executed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moeplace.atomic import atomic_dir, atomic_path, check_output_file
from moeplace.calibrate.safe_io import check_regular_file, load_npy, loads_json, open_npz
from moeplace.calibrate.trace import Trace, TraceMeta, check_ids, check_trace
from moeplace.errors import MoeplaceError, file_error

FORMAT = "moeplace-trace"
VERSION = 1


def load_trace(path: str | Path) -> Trace:
    """Load and check a trace: a moeplace trace directory or an interchange ``.npz``.

    Raises ``MoeplaceError`` with the path and the problem for anything missing or malformed.
    """
    path = Path(path)
    if not path.exists():
        raise file_error(path, "no such file or directory")
    try:
        if path.is_dir():
            trace = _read_dir(path)
        elif path.suffix == ".npz":
            check_regular_file(path)
            trace = _read_npz(path)
        else:
            raise MoeplaceError("not a trace: expected a moeplace trace directory or an .npz file")
        check_trace(trace)
    except MoeplaceError as exc:
        raise file_error(path, exc) from None
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise file_error(path, "holds pickled objects; refusing to unpickle untrusted data") from None
        raise file_error(path, f"unreadable ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise file_error(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    return trace


def save_trace(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` atomically: ``*.npz`` as interchange, any other name as a trace directory."""
    path = Path(path)
    if path.suffix == ".npz":
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                topk_ids=np.asarray(trace.topk_ids, dtype=np.int16),
                doc_offsets=trace.doc_offsets.astype(np.int64),
                doc_labels=trace.doc_labels.astype(str),
                meta_json=np.array(json.dumps(trace.meta.to_dict())),
            )
        return
    with atomic_dir(path, replaceable=_is_trace_dir) as tmp:
        header = {"format": FORMAT, "version": VERSION}
        header |= {"num_tokens": trace.num_tokens, "num_documents": trace.num_documents}
        (tmp / "meta.json").write_text(json.dumps(header | trace.meta.to_dict(), indent=1) + "\n")
        np.save(tmp / "topk_ids.npy", trace.topk_ids, allow_pickle=False)
        np.save(tmp / "doc_offsets.npy", trace.doc_offsets.astype(np.int64), allow_pickle=False)
        np.save(tmp / "doc_labels.npy", trace.doc_labels.astype(str), allow_pickle=False)


class TraceWriter:
    """Appends documents to a trace directory being built, holding none of them in memory.

    Use through ``trace_writer``; ids go to a raw file as they come and become ``topk_ids.npy``
    (copied in chunks) when the writer finishes.
    """

    def __init__(self, directory: Path, meta: TraceMeta):
        self.directory, self.meta = directory, meta
        self.lengths: list[int] = []
        self.labels: list[str] = []
        self._raw = open(directory / "topk_ids.raw", "wb")  # noqa: SIM115 - closed in finish()

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def add(self, topk_ids: np.ndarray, label: str) -> None:
        """Append one document: ids ``[t, L, k]`` (int, -1 = no expert)."""
        expected = (len(self.meta.layer_ids), self.meta.top_k)
        if topk_ids.ndim != 3 or topk_ids.shape[1:] != expected:
            raise MoeplaceError(
                f"document ids of shape {topk_ids.shape}, expected [tokens, {expected[0]}, {expected[1]}]"
            )
        check_ids(topk_ids, self.meta.num_experts, self.num_tokens)
        np.ascontiguousarray(topk_ids, dtype="<i2").tofile(self._raw)
        self.lengths.append(int(topk_ids.shape[0]))
        self.labels.append(str(label))

    def finish(self) -> None:
        self._raw.close()
        if not self.lengths:
            raise MoeplaceError("no documents were written")
        shape = (self.num_tokens, len(self.meta.layer_ids), self.meta.top_k)
        raw = self.directory / "topk_ids.raw"
        # the raw file is already the array's data: prefix the .npy header and copy it through with
        # plain writes (a writable memory map would count the whole file as resident memory)
        with open(self.directory / "topk_ids.npy", "wb") as out, open(raw, "rb") as f:
            header = {"descr": "<i2", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(f, out, 1 << 24)
        raw.unlink()
        offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        np.save(self.directory / "doc_offsets.npy", offsets, allow_pickle=False)
        np.save(self.directory / "doc_labels.npy", np.array(self.labels, dtype=str), allow_pickle=False)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "num_tokens": shape[0],
            "num_documents": len(self.lengths),
        }
        (self.directory / "meta.json").write_text(json.dumps(header | self.meta.to_dict(), indent=1) + "\n")


@contextlib.contextmanager
def trace_writer(path: str | Path, meta: TraceMeta) -> Iterator[TraceWriter]:
    """A ``TraceWriter`` whose trace appears at ``path`` (atomically) when the block succeeds.

    For an ``.npz`` target the trace is built in a temporary directory beside it, then compressed.
    """
    path = Path(path)
    if path.suffix == ".npz":
        check_output_file(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            scratch = tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent)
        except OSError as exc:
            raise file_error(path, f"cannot write it ({exc.strerror or exc})") from None
        with scratch as tmp:
            with trace_writer(Path(tmp) / "trace", meta) as writer:
                yield writer
            try:  # the trace as written, checked under the name the user gave it
                trace = _read_dir(Path(tmp) / "trace")
                check_trace(trace)
            except MoeplaceError as exc:
                raise file_error(path, exc) from None
            save_trace(trace, path)
        return
    with atomic_dir(path, replaceable=_is_trace_dir) as tmp:
        writer = TraceWriter(tmp, meta)
        try:
            yield writer
        finally:
            writer._raw.close()
        writer.finish()


def _is_trace_dir(path: Path) -> bool:
    try:
        return json.loads((path / "meta.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def _read_dir(path: Path) -> Trace:
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise MoeplaceError("a directory but not a moeplace trace (no meta.json)")
    header = loads_json(meta_file.read_text(), "meta.json")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise MoeplaceError(f"meta.json is not a {FORMAT} header")
    if header.get("version") != VERSION:
        raise MoeplaceError(f"trace format version {header.get('version')!r}; this moeplace reads {VERSION}")
    arrays = {}
    for name in ("topk_ids", "doc_offsets", "doc_labels"):
        file = path / f"{name}.npy"
        if not file.exists():
            raise MoeplaceError(f"missing {file.name}")
        if not file.is_file():  # a pipe would block the reader
            raise MoeplaceError(f"{file.name} is not a regular file")
        try:
            arrays[name] = load_npy(file, mmap_mode="r" if name == "topk_ids" else None)
        except ValueError as exc:
            raise MoeplaceError(f"{file.name} unreadable ({exc})") from None
        except (OSError, EOFError) as exc:
            raise MoeplaceError(f"{file.name} unreadable ({type(exc).__name__}: {exc})") from None
    trace = Trace(meta=TraceMeta.from_dict(header), **arrays)
    if header.get("num_tokens") != trace.num_tokens:
        raise MoeplaceError(
            f"meta.json says {header.get('num_tokens')} tokens, topk_ids.npy holds {trace.num_tokens}"
        )
    return trace


def _read_npz(path: Path) -> Trace:
    with open_npz(path) as z:
        missing = [k for k in ("topk_ids", "doc_offsets", "meta_json") if k not in z.files]
        if missing:
            raise MoeplaceError(f"interchange .npz lacks {', '.join(missing)}")
        topk, offsets = z["topk_ids"], z["doc_offsets"]
        labels = z["doc_labels"] if "doc_labels" in z.files else np.full(max(len(offsets) - 1, 0), "")
        meta = TraceMeta.from_dict(loads_json(str(z["meta_json"]), "meta_json"))
    if offsets.dtype.kind not in "iu":
        raise MoeplaceError(f"doc_offsets has dtype {offsets.dtype}; expected integers")
    return Trace(_as_int16(topk), offsets.astype(np.int64, copy=False), labels.astype(str), meta)


def _as_int16(ids: np.ndarray) -> np.ndarray:
    """Expert ids as int16, refusing non-integers and values a cast would wrap."""
    if ids.dtype == np.int16:
        return ids
    if ids.dtype.kind not in "iu":
        raise MoeplaceError(f"topk_ids has dtype {ids.dtype}; expected integers")
    info = np.iinfo(np.int16)  # past the cast's range ids would wrap; inside it check_ids says which token
    if ids.size and (ids.min() < info.min or ids.max() > info.max):
        raise MoeplaceError(f"topk_ids has ids outside int16: {ids.min()} .. {ids.max()}")
    return ids.astype(np.int16)

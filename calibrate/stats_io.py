"""Statistics files (``.npz``, no pickle) and loading "a trace or statistics" for planning.

Layout: ``stats_meta_json`` (format ``moeplace-statistics``, version, trace metadata, token and
document counts, resample seed, top-k set sample rate, workload labels if any), ``load`` int64
``[L, N]``, ``workload_load`` int64 ``[W, L, N]`` for load records of several workloads,
``load_resamples`` int64 ``[L, B, N]`` and, unless the source recorded expert load only, ``coact``
int64 ``[L, N, N]`` and the distinct top-k sets of every layer (``sets``, ``set_counts``,
``set_offsets``).
"""

from __future__ import annotations

import itertools
import json
import zipfile
from pathlib import Path

import numpy as np

from moeplace.atomic import atomic_path
from moeplace.calibrate.safe_io import ZIP_ERRORS, check_regular_file, loads_json, open_npz
from moeplace.calibrate.stats import RESAMPLE_UNITS, Statistics, TopkSets, compute_statistics, expert_load
from moeplace.calibrate.trace import Trace, TraceMeta
from moeplace.calibrate.trace_io import load_trace
from moeplace.errors import MoeplaceError, file_error

FORMAT = "moeplace-statistics"
VERSION = 1


def save_statistics(stats: Statistics, path: str | Path) -> None:
    """Write ``stats`` atomically as a compressed ``.npz``."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "num_tokens": stats.num_tokens,
        "num_documents": stats.num_documents,
        "resample_seed": stats.resample_seed,
        "set_sample_rate": stats.set_sample_rate,
        "resample_by": stats.resample_by,
    }
    arrays = {"load": stats.load, "load_resamples": stats.load_resamples}
    if stats.workload_load is not None:
        header["workloads"] = list(stats.workloads)
        arrays["workload_load"] = stats.workload_load
    if stats.coact is not None:
        arrays["coact"] = stats.coact
    if stats.document_hashes is not None:
        arrays["document_hashes"] = stats.document_hashes.astype("<u8")
    if stats.topk_sets is not None:
        arrays["set_offsets"] = np.cumsum([0] + [s.counts.shape[0] for s in stats.topk_sets])
        arrays["sets"] = np.concatenate([s.sets for s in stats.topk_sets])
        arrays["set_counts"] = np.concatenate([s.counts for s in stats.topk_sets])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, stats_meta_json=np.array(json.dumps(header | stats.meta.to_dict())), **arrays)


def is_statistics_file(path: Path) -> bool:
    """True for a moeplace statistics ``.npz`` (by content, not by name)."""
    try:
        with zipfile.ZipFile(path) as z:
            return "stats_meta_json.npy" in z.namelist()
    except ZIP_ERRORS:
        return False


def load_statistics(path: str | Path) -> Statistics:
    """Load and check a statistics file; ``MoeplaceError`` naming the file for any problem."""
    path = Path(path)
    try:
        with open_npz(path) as z:
            header = loads_json(str(z["stats_meta_json"]), "stats_meta_json")
            if (
                not isinstance(header, dict)
                or header.get("format") != FORMAT
                or header.get("version") != VERSION
            ):
                raise MoeplaceError(f"not a {FORMAT} version {VERSION} file")
            meta = TraceMeta.from_dict(header)
            names = ("load", "load_resamples", "coact", "workload_load")
            counts_of = {name: _counts(z, name) for name in names if name in z}
            load, resamples, coact = counts_of["load"], counts_of["load_resamples"], counts_of.get("coact")
            topk_sets = _topk_sets(z, meta) if "sets" in z.files else None
            hashes = (
                _document_hashes(z, header.get("num_documents")) if "document_hashes" in z.files else None
            )
        n, num_layers = meta.num_experts, len(meta.layer_ids)
        if load.shape != (num_layers, n) or resamples.ndim != 3 or resamples.shape[::2] != (num_layers, n):
            raise MoeplaceError(f"load arrays do not match {num_layers} layers x {n} experts")
        if coact is not None and coact.shape != (num_layers, n, n):
            raise MoeplaceError(f"coact has shape {coact.shape}, expected {(num_layers, n, n)}")
        numbers = {key: header.get(key) for key in ("num_tokens", "num_documents", "resample_seed")}
        if not all(type(v) is int and 0 <= v < 2**62 for v in numbers.values()):
            raise MoeplaceError(f"num_tokens, num_documents and resample_seed must be counts, got {numbers}")
        rate = header.get("set_sample_rate", 1.0)
        if type(rate) not in (int, float) or not 0 < rate <= 1:
            raise MoeplaceError(f"set_sample_rate must be in (0, 1], got {rate!r}")
        resample_by = header.get("resample_by", "documents")  # files before label resamples: documents
        if resample_by not in RESAMPLE_UNITS:
            raise MoeplaceError(
                f"resample_by must be one of {', '.join(RESAMPLE_UNITS)}, got {resample_by!r}"
            )
        _check_consistent(meta, load, coact, numbers["num_tokens"])
        workloads = _workloads(header, counts_of.get("workload_load"), load)
        return Statistics(
            meta, load, coact, resamples, *numbers.values(), topk_sets, float(rate), resample_by, **workloads,
            document_hashes=hashes,
        )  # fmt: skip
    except MoeplaceError as exc:
        raise file_error(path, exc) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise file_error(path, f"unreadable statistics ({exc})") from None


def _check_consistent(meta: TraceMeta, load: np.ndarray, coact: np.ndarray | None, tokens: int) -> None:
    """The counts of one trace agree: at most ``top_k`` activations a token, co-activation
    symmetric with an empty diagonal, and an expert co-fires at most ``top_k - 1`` times per
    activation."""
    if np.any(load.sum(axis=1) > tokens * meta.top_k):
        raise MoeplaceError(f"load counts more activations than num_tokens {tokens} x top-{meta.top_k}")
    if coact is None:
        return
    if not np.array_equal(coact, coact.transpose(0, 2, 1)) or np.any(np.einsum("lii->li", coact)):
        raise MoeplaceError("coact is not symmetric with an empty diagonal")
    if np.any(coact.sum(axis=2) > load * (meta.top_k - 1)):
        raise MoeplaceError("coact counts more co-activations than the load allows")


def _workloads(header: dict, workload_load: np.ndarray | None, load: np.ndarray) -> dict:
    """The workload fields of ``Statistics``: labels from the header, counts ``[W, L, N]`` that sum
    to ``load``; ``{}`` for statistics without workloads."""
    labels = header.get("workloads")
    if workload_load is None and labels is None:
        return {}
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise MoeplaceError("workloads must be a list of labels, with workload_load beside it")
    if workload_load is None or workload_load.shape != (len(labels), *load.shape):
        raise MoeplaceError(f"workload_load must be [{len(labels)} workloads, {load.shape[0]} layers, N]")
    if not np.array_equal(workload_load.sum(axis=0), load):
        raise MoeplaceError("workload_load does not sum to load")
    return {"workloads": tuple(labels), "workload_load": workload_load}


def _document_hashes(z, documents) -> np.ndarray:
    """uint64 ``[D]``: one hash a document (``calibrate/fingerprints.py``)."""
    hashes = z["document_hashes"]  # sizes checked by the reader before allocating
    if hashes.dtype != np.dtype("<u8") or hashes.shape != (documents,):
        raise MoeplaceError(
            f"document_hashes must be {documents} uint64 values, got {hashes.dtype} {hashes.shape}"
        )
    return hashes.astype(np.uint64)


def _counts(z, name: str) -> np.ndarray:
    """Array ``name`` of non-negative integer counts, as int64."""
    array = z[name]
    if array.dtype.kind not in "iu":
        raise MoeplaceError(f"{name} must hold integer counts, has {array.dtype}")
    if array.size and array.min() < 0:
        raise MoeplaceError(f"{name} holds negative counts")
    return array.astype(np.int64)


def _topk_sets(z, meta: TraceMeta) -> tuple[TopkSets, ...]:
    """Each layer's distinct top-k sets: ``sets`` int ``[H, k]`` (experts, -1 padding), ``set_counts``
    ``[H]`` and ``set_offsets`` ``[L + 1]`` rising from 0 to H."""
    bounds, sets, counts = z["set_offsets"], z["sets"], _counts(z, "set_counts")
    if bounds.dtype.kind not in "iu" or sets.dtype.kind not in "iu":
        raise MoeplaceError("set_offsets and sets must hold integers")
    if sets.ndim != 2 or sets.shape[1] != meta.top_k or counts.shape != (sets.shape[0],):
        raise MoeplaceError(f"sets must be [sets, top_k = {meta.top_k}] with a count each")
    if bounds.shape != (len(meta.layer_ids) + 1,) or bounds[0] != 0 or bounds[-1] != sets.shape[0]:
        raise MoeplaceError("set_offsets must rise from 0 to the number of sets, one step per layer")
    if np.any(np.diff(bounds) < 0):
        raise MoeplaceError("set_offsets must not fall")
    if sets.size and (sets.min() < -1 or sets.max() >= meta.num_experts or not (sets >= 0).any(axis=1).all()):
        raise MoeplaceError(f"sets must hold experts in 0..{meta.num_experts - 1}, one at least")
    running = np.concatenate([[0], np.cumsum(counts)])
    if np.any(running[bounds[1:]] - running[bounds[:-1]] <= 0):
        raise MoeplaceError("a layer's top-k sets count no token")
    sets = sets.astype(np.int16)
    return tuple(TopkSets(sets[lo:hi], counts[lo:hi]) for lo, hi in itertools.pairwise(bounds.tolist()))


def load_trace_or_statistics(path: str | Path) -> Trace | Statistics:
    """A statistics file if ``path`` is one, else a trace (directory or interchange ``.npz``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        check_regular_file(path)  # a pipe or a device would block the zip reader
    return load_statistics(path) if path.is_file() and is_statistics_file(path) else load_trace(path)


def source_load(source: Trace | Statistics) -> np.ndarray:
    """Activations per expert and MoE layer, int64 ``[L, N]``, of a trace or statistics: for load
    records of several workloads, their pooled shares (``Statistics.pooled_load``, what solvers fit
    and placements record)."""
    return source.pooled_load() if isinstance(source, Statistics) else expert_load(source)


def as_statistics(source: Trace | Statistics, **options) -> Statistics:
    """Statistics as they are, or a trace's statistics (``compute_statistics`` with ``options``)."""
    return source if isinstance(source, Statistics) else compute_statistics(source, **options)


def statistics_of_file(path: str | Path, **options) -> Statistics:
    """``as_statistics`` of a file: one shard's work in a merge, on the worker that reads it."""
    return as_statistics(load_trace_or_statistics(path), **options)

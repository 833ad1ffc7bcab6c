"""Statistics files (``.npz``, no pickle) and loading "a trace or statistics" for planning.

Layout: ``stats_meta_json`` (format ``moeplace-statistics``, version, trace metadata, token and
document counts, resample seed, top-k set sample rate), ``load`` int64 ``[L, N]``,
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
from moeplace.calibrate.safe_io import loads_json, open_npz
from moeplace.calibrate.stats import Statistics, TopkSets
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
    }
    arrays = {"load": stats.load, "load_resamples": stats.load_resamples}
    if stats.coact is not None:
        arrays["coact"] = stats.coact
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
    except (OSError, zipfile.BadZipFile):
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
            load, resamples = z["load"].astype(np.int64), z["load_resamples"].astype(np.int64)
            coact = z["coact"].astype(np.int64) if "coact" in z.files else None
            topk_sets = None
            if "sets" in z.files:
                bounds, sets, counts = z["set_offsets"], z["sets"].astype(np.int16), z["set_counts"]
                if bounds.shape != (len(meta.layer_ids) + 1,) or sets.shape[0] != counts.shape[0]:
                    raise MoeplaceError("top-k set arrays do not match the layers")
                topk_sets = tuple(
                    TopkSets(sets[lo:hi], counts[lo:hi].astype(np.int64))
                    for lo, hi in itertools.pairwise(bounds.tolist())
                )
        n, num_layers = meta.num_experts, len(meta.layer_ids)
        if load.shape != (num_layers, n) or resamples.ndim != 3 or resamples.shape[::2] != (num_layers, n):
            raise MoeplaceError(f"load arrays do not match {num_layers} layers x {n} experts")
        if coact is not None and coact.shape != (num_layers, n, n):
            raise MoeplaceError(f"coact has shape {coact.shape}, expected {(num_layers, n, n)}")
        if load.min(initial=0) < 0 or (coact is not None and coact.min(initial=0) < 0):
            raise MoeplaceError("negative counts")
        return Statistics(
            meta,
            load,
            coact,
            resamples,
            int(header["num_tokens"]),
            int(header["num_documents"]),
            int(header["resample_seed"]),
            topk_sets,
            float(header.get("set_sample_rate", 1.0)),
        )
    except MoeplaceError as exc:
        raise file_error(path, str(exc)) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise file_error(path, f"unreadable statistics ({exc})") from None


def load_trace_or_statistics(path: str | Path) -> Trace | Statistics:
    """A statistics file if ``path`` is one, else a trace (directory or interchange ``.npz``)."""
    path = Path(path)
    return load_statistics(path) if path.is_file() and is_statistics_file(path) else load_trace(path)

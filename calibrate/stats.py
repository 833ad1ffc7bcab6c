"""Co-activation statistics per MoE layer: sums over documents, so shards merge exactly by addition.

Besides expert load and pair co-activation, the statistics carry expert load under B Poisson
bootstrap resamples of the documents. Load-capped solvers require their cap to hold on every
resample as well, so a cap met on calibration traffic also holds on unseen traffic from the same
distribution instead of exploiting the calibration sample's noise. Each document's resample
weights come from a keyed hash of its content, so they do not depend on how a trace was sharded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from moeplace.calibrate.trace import Trace, TraceMeta
from moeplace.errors import MoeplaceError

DEFAULT_RESAMPLES = 16
MAX_RESAMPLES = 32  # one 64-byte BLAKE2b digest per document: 2 bytes per resample

# Poisson(1) cumulative distribution, to turn a uniform draw into a resample weight.
_POISSON1_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, n + 1)) for n in range(16)])


@dataclasses.dataclass(frozen=True)
class TopkSets:
    """The distinct expert sets tokens selected at one layer, and how many tokens chose each.

    ``sets``: int16 ``[H, k]``, each row sorted ascending (-1 padding first); ``counts``: int64 ``[H]``.
    These are the hyperedges of the placement problem: total fan-out is exactly
    ``sum_h counts[h] * distinct devices of sets[h]``.
    """

    sets: np.ndarray
    counts: np.ndarray

    @classmethod
    def of_tokens(cls, ids: np.ndarray) -> TopkSets:
        """From token ids ``[t, k]`` (tokens with no expert are left out)."""
        rows = np.sort(ids, axis=1)
        rows = rows[(rows >= 0).any(axis=1)].astype(np.int16)
        if not rows.shape[0]:
            return cls(np.zeros((0, ids.shape[1]), np.int16), np.zeros(0, np.int64))
        sets, inverse = unique_rows(rows)
        return cls(sets, np.bincount(inverse, minlength=sets.shape[0]).astype(np.int64))

    @classmethod
    def merged(cls, parts: list[TopkSets]) -> TopkSets:
        """The union of ``parts``, counts summed (exact under any sharding)."""
        sets, inverse = unique_rows(np.concatenate([p.sets for p in parts]))
        counts = np.bincount(
            inverse, weights=np.concatenate([p.counts for p in parts]), minlength=sets.shape[0]
        )
        return cls(sets, counts.astype(np.int64))

    def __eq__(self, other) -> bool:
        return np.array_equal(self.sets, other.sets) and np.array_equal(self.counts, other.counts)


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """One MoE layer's statistics, the input of every solver.

    Attributes:
        load: int64 ``[N]`` activations per expert (tokens that selected it).
        coact: int64 ``[N, N]`` tokens that selected both experts; symmetric, zero diagonal.
            None when the source recorded expert load only (an SGLang ``stat`` dump).
        load_resamples: int64 ``[B, N]`` expert load under B bootstrap resamples of the documents.
        topk_sets: the distinct top-k sets with token counts (None for load-only sources).
    """

    load: np.ndarray
    coact: np.ndarray | None
    load_resamples: np.ndarray
    topk_sets: TopkSets | None = None

    @property
    def num_experts(self) -> int:
        return int(self.load.shape[0])


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Statistics of a whole trace: ``load [L, N]``, ``coact [L, N, N]``, ``load_resamples [L, B, N]``.

    ``coact`` and ``topk_sets`` (one ``TopkSets`` per layer) are None for load-only sources;
    ``load_resamples`` then has B = 0.
    """

    meta: TraceMeta
    load: np.ndarray
    coact: np.ndarray | None
    load_resamples: np.ndarray
    num_tokens: int
    num_documents: int
    resample_seed: int
    topk_sets: tuple[TopkSets, ...] | None = None

    @property
    def num_layers(self) -> int:
        return int(self.load.shape[0])

    @property
    def load_only(self) -> bool:
        return self.coact is None

    def layer(self, index: int) -> LayerStats:
        """Statistics of MoE layer ``index`` (position in ``meta.layer_ids``, not the model's index)."""
        coact = None if self.coact is None else self.coact[index]
        sets = None if self.topk_sets is None else self.topk_sets[index]
        return LayerStats(self.load[index], coact, self.load_resamples[index], sets)

    def provenance(self) -> dict:
        """What a placement file records about the statistics it was planned from."""
        h = hashlib.sha256(json.dumps(self.meta.to_dict(), sort_keys=True).encode())
        for array in (self.load, self.coact, self.load_resamples):
            if array is not None:
                h.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
        for sets in self.topk_sets or ():
            h.update(np.ascontiguousarray(sets.sets, dtype="<i2").tobytes())
            h.update(np.ascontiguousarray(sets.counts, dtype="<i8").tobytes())
        return {
            "fingerprint": "sha256:" + h.hexdigest(),
            "tokens": self.num_tokens,
            "documents": self.num_documents,
        }

    def __add__(self, other: Statistics) -> Statistics:
        """Statistics of the concatenation of both traces (exact)."""
        if self.meta.num_experts != other.meta.num_experts or self.meta.top_k != other.meta.top_k:
            raise MoeplaceError("cannot merge statistics of different experts or top-k")
        if self.meta.layer_ids != other.meta.layer_ids:
            raise MoeplaceError("cannot merge statistics of different MoE layers")
        if (
            self.resample_seed != other.resample_seed
            or self.load_resamples.shape != other.load_resamples.shape
        ):
            raise MoeplaceError("cannot merge statistics resampled with different seeds or counts")
        return dataclasses.replace(
            self,
            load=self.load + other.load,
            coact=None if self.load_only or other.load_only else self.coact + other.coact,
            topk_sets=None
            if self.topk_sets is None or other.topk_sets is None
            else tuple(TopkSets.merged([a, b]) for a, b in zip(self.topk_sets, other.topk_sets, strict=True)),
            load_resamples=self.load_resamples + other.load_resamples,
            num_tokens=self.num_tokens + other.num_tokens,
            num_documents=self.num_documents + other.num_documents,
        )


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_inverse=True)`` for int16 ``[H, k]`` rows, several times faster.

    Each row is read as a number in base 2^16 (digits shifted to be non-negative), a few digits to
    a uint64 key, and the rows are sorted by those keys: the same lexicographic order, exactly.
    """
    digits = rows.astype(np.int64) + 32768  # 0 .. 65535
    keys = []
    for start in range(0, rows.shape[1], 3):  # three 16-bit digits fit a uint64 key
        key = np.zeros(rows.shape[0], np.uint64)
        for column in range(start, min(start + 3, rows.shape[1])):
            key = (key << np.uint64(16)) | digits[:, column].astype(np.uint64)
        keys.append(key)
    order = np.lexsort(keys[::-1])
    ordered = [key[order] for key in keys]
    new = np.ones(rows.shape[0], bool)
    if rows.shape[0]:
        new[1:] = np.any([key[1:] != key[:-1] for key in ordered], axis=0)
    group = np.cumsum(new) - 1
    inverse = np.empty(rows.shape[0], np.int64)
    inverse[order] = group
    return rows[order[new]], inverse


def compute_statistics(
    trace: Trace, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, chunk_tokens: int = 1 << 16
) -> Statistics:
    """Accumulate per-layer statistics of ``trace``, reading it a chunk of documents at a time.

    Vectorized over tokens: per layer and chunk, one ``bincount`` for loads, one over the
    ``k(k-1)/2`` expert pairs of every token, one per (document, expert) for the resamples, and
    one ``unique`` over the sorted top-k rows for the distinct sets.
    """
    if not 0 <= resamples <= MAX_RESAMPLES:
        raise MoeplaceError(f"resamples must be between 0 and {MAX_RESAMPLES}, got {resamples}")
    n, k, num_layers = trace.meta.num_experts, trace.meta.top_k, trace.num_layers
    load = np.zeros((num_layers, n), np.int64)
    pairs = np.zeros((num_layers, n * n), np.int64)
    load_resamples = np.zeros((num_layers, resamples, n), np.int64)
    set_parts: list[list[TopkSets]] = [[] for _ in range(num_layers)]
    first_slot, second_slot = np.triu_indices(k, 1)
    offsets = trace.doc_offsets
    for first, end in trace.document_chunks(chunk_tokens):
        ids = np.asarray(trace.topk_ids[offsets[first] : offsets[end]], dtype=np.int64)  # [t, L, k]
        doc_of_token = np.repeat(np.arange(end - first), np.diff(offsets[first : end + 1]))
        weights = document_weights(trace, first, end, resamples, seed)  # [docs, B]
        for layer in range(num_layers):
            x = ids[:, layer, :]
            valid = x >= 0
            load[layer] += np.bincount(x[valid], minlength=n)
            a, b = x[:, first_slot], x[:, second_slot]
            both = (a >= 0) & (b >= 0)
            pairs[layer] += np.bincount((a * n + b)[both], minlength=n * n)
            set_parts[layer].append(TopkSets.of_tokens(x))
            if resamples:
                doc = np.broadcast_to(doc_of_token[:, None], x.shape)[valid]
                per_doc = np.bincount(doc * n + x[valid], minlength=(end - first) * n)
                load_resamples[layer] += weights.T @ per_doc.reshape(end - first, n)
    upper = pairs.reshape(num_layers, n, n)
    topk_sets = []
    for layer in range(num_layers):  # free each layer's parts once merged: at scale they are GiBs
        topk_sets.append(TopkSets.merged(set_parts[layer]))
        set_parts[layer] = []
    return Statistics(
        meta=trace.meta,
        load=load,
        coact=upper + upper.transpose(0, 2, 1),
        load_resamples=load_resamples,
        num_tokens=trace.num_tokens,
        num_documents=trace.num_documents,
        resample_seed=seed,
        topk_sets=tuple(topk_sets),
    )


def document_weights(trace: Trace, first: int, end: int, resamples: int, seed: int) -> np.ndarray:
    """Poisson(1) bootstrap weights, int64 ``[end - first, resamples]``, for documents first..end-1.

    Each document's weights are a function of its content and ``seed`` only (a keyed BLAKE2b
    digest read as uniforms), so any sharding of a trace gives every document the same weights.
    """
    weights = np.zeros((end - first, resamples), np.int64)
    if not resamples:
        return weights
    key = seed.to_bytes(8, "little")
    offsets = trace.doc_offsets
    digests = bytearray()
    for doc in range(first, end):  # one hash per document, not per token
        content = np.ascontiguousarray(trace.topk_ids[offsets[doc] : offsets[doc + 1]], dtype="<i2")
        digests += hashlib.blake2b(content.tobytes(), key=key, digest_size=2 * resamples).digest()
    uniforms = np.frombuffer(bytes(digests), dtype="<u2").reshape(end - first, resamples) / 65536.0
    return np.searchsorted(_POISSON1_CDF, uniforms, side="right").astype(np.int64)


def expert_load(trace: Trace) -> np.ndarray:
    """Activations per expert and MoE layer, int64 ``[L, N]``, a chunk of documents at a time."""
    n = trace.meta.num_experts
    load = np.zeros((trace.num_layers, n), np.int64)
    for first, end in trace.document_chunks():
        chunk = np.asarray(trace.topk_ids[trace.doc_offsets[first] : trace.doc_offsets[end]], np.int64)
        for layer in range(trace.num_layers):
            ids = chunk[:, layer]
            load[layer] += np.bincount(ids[ids >= 0], minlength=n)
    return load


def load_skew(load: np.ndarray) -> dict[str, float]:
    """How uneven one layer's expert load ``[N]`` is: the shape solvers must balance.

    ``max_mean``: hottest expert over the mean; ``max_min``: hottest over coldest (inf with a
    dead expert); ``gini``: Gini coefficient (0 even, 1 all on one expert); ``top_decile_share``:
    share of activations taken by the busiest 10% of experts; ``dead``: experts never selected.
    """
    n = load.shape[0]
    ordered = np.sort(load.astype(np.float64))
    total = ordered.sum()
    if not total:
        return {"max_mean": 0.0, "max_min": 0.0, "gini": 0.0, "top_decile_share": 0.0, "dead": n}
    gini = float((2 * np.arange(1, n + 1) - n - 1) @ ordered / (n * total))
    return {
        "max_mean": float(ordered[-1] * n / total),
        "max_min": float(ordered[-1] / ordered[0]) if ordered[0] else float("inf"),
        "gini": gini,
        "top_decile_share": float(ordered[-max(1, n // 10) :].sum() / total),
        "dead": int(np.count_nonzero(ordered == 0)),
    }

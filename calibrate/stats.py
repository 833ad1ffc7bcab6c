"""Co-activation statistics per MoE layer: sums over documents, so shards merge exactly by addition.

Besides expert load and pair co-activation, the statistics carry expert load under B Poisson
bootstrap resamples of the documents. Load-capped solvers require their cap to hold on every
resample as well, so a cap met on calibration traffic also holds on unseen traffic from the same
distribution instead of exploiting the calibration sample's noise. Each document's resample
weights come from a keyed hash of its content, so they do not depend on how a trace was sharded.

The distinct top-k sets (the hyperedges of the exact fan-out objective) are kept for every token
of a trace up to ``DEFAULT_SET_TOKENS`` tokens. Past that, with hundreds of experts nearly every
token is its own set and the table would be as large as the trace, so each distinct set is kept
with probability ``set_sample_rate`` = tokens budget / tokens, decided by a keyed hash of the set
itself: the same set is kept or dropped in every shard, so sampled tables still merge exactly.
Load, co-activation and resamples always count every token.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

import numpy as np

from moeplace.calibrate.fingerprints import encode_hashes, routing_hashes, workload_hashes
from moeplace.calibrate.trace import Trace, TraceMeta, groups_of, layer_chunks, layer_pool
from moeplace.errors import MoeplaceError

DEFAULT_RESAMPLES = 16
RESAMPLE_UNITS = ("documents", "labels")
MAX_RESAMPLES = 32  # one 64-byte BLAKE2b digest per document: 2 bytes per resample
DEFAULT_SET_TOKENS = 1 << 18  # distinct top-k sets kept for all tokens up to this many (see above)
POOLED_TOTAL = 1 << 30  # activations a layer of workloads' pooled shares (``Statistics.pooled_load``)

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
    def of_rows(cls, rows: np.ndarray) -> TopkSets:
        """From int16 rows ``[t, k]``, each sorted ascending and holding at least one expert."""
        if not rows.shape[0]:
            return cls(np.zeros((0, rows.shape[1]), np.int16), np.zeros(0, np.int64))
        sets, inverse = unique_rows(rows)
        return cls(sets, np.bincount(inverse, minlength=sets.shape[0]).astype(np.int64))

    def sampled(self, rate: float, num_experts: int, seed: int) -> TopkSets:
        """The sets whose keyed hash falls below ``rate`` (all of them at rate 1)."""
        if rate >= 1.0:
            return self
        keep = set_uniforms(self.sets, num_experts, seed) < rate
        return TopkSets(self.sets[keep], self.counts[keep])

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
        workload_share: float ``[W, N]`` each workload's share of the layer's activations per
            expert (rows sum to 1 before ``groups.restrict`` keeps some experts), or None: one
            workload, ``load``.
        workload_weight: float ``[W]`` summing to 1, the weight of each workload (with the shares).
    """

    load: np.ndarray
    coact: np.ndarray | None
    load_resamples: np.ndarray
    topk_sets: TopkSets | None = None
    workload_share: np.ndarray | None = None
    workload_weight: np.ndarray | None = None

    @property
    def num_experts(self) -> int:
        return int(self.load.shape[0])

    @property
    def workload_shares(self) -> np.ndarray:
        """float ``[W, N]``: the workloads' shares, or ``load`` as one workload."""
        if self.workload_share is not None:
            return self.workload_share
        total = self.load.sum()
        return (self.load / (total if total else 1))[None, :].astype(np.float64)

    @property
    def workload_weights(self) -> np.ndarray:
        """float ``[W]``, summing to 1."""
        return np.ones(1) if self.workload_weight is None else self.workload_weight


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Statistics of a whole trace: ``load [L, N]``, ``coact [L, N, N]``, ``load_resamples [L, B, N]``.

    ``coact`` and ``topk_sets`` (one ``TopkSets`` per layer) are None for load-only sources;
    ``load_resamples`` then has B = 0.

    Load records of several workloads (``moeplace import sglang-load``: one a file) keep each
    workload's load apart: ``workloads`` names them, ``workload_load`` int64 ``[W, L, N]`` holds
    their counts (``load`` is their sum). Solvers then see each workload's share of a layer, and as
    ``LayerStats.load`` the shares pooled with ``workload_weights`` (equal when empty) and scaled
    to ``POOLED_TOTAL`` activations a layer, so a long recording does not outweigh a short one.
    """

    meta: TraceMeta
    load: np.ndarray
    coact: np.ndarray | None
    load_resamples: np.ndarray
    num_tokens: int
    num_documents: int
    resample_seed: int
    topk_sets: tuple[TopkSets, ...] | None = None
    set_sample_rate: float = 1.0
    resample_by: str = "documents"  # what a load resample draws: documents, or whole label groups
    workloads: tuple[str, ...] = ()
    workload_load: np.ndarray | None = None
    workload_weights: tuple[float, ...] = ()
    document_hashes: np.ndarray | None = None  # uint64 [D]: each document's routing hash (fingerprints.py)

    def __post_init__(self):
        if self.document_hashes is not None and self.document_hashes.shape != (self.num_documents,):
            raise MoeplaceError(
                f"{self.document_hashes.shape[0]} document hashes for {self.num_documents} documents"
            )
        if self.workload_load is None:
            if self.workloads or self.workload_weights:
                raise MoeplaceError("workload labels or weights without workload loads")
            return
        expected = (len(self.workloads), *self.load.shape)
        if self.workload_load.shape != expected:
            raise MoeplaceError(f"workload loads have shape {self.workload_load.shape}, expected {expected}")
        if len(set(self.workloads)) != len(self.workloads):
            raise MoeplaceError(f"workload labels repeat: {list(self.workloads)}")
        if self.workload_weights and (
            len(self.workload_weights) != len(self.workloads)
            or not all(np.isfinite(w) and w >= 0 for w in self.workload_weights)
            or not sum(self.workload_weights) > 0
        ):
            raise MoeplaceError("workload weights must be one non-negative number a workload, not all 0")

    @property
    def num_layers(self) -> int:
        return int(self.load.shape[0])

    @property
    def weights(self) -> np.ndarray:
        """float ``[W]``: the workloads' weights, summing to 1 (equal unless set)."""
        w = np.asarray(self.workload_weights or [1.0] * len(self.workloads), np.float64)
        return w / w.sum()

    def with_weights(self, weights: dict[str, float]) -> Statistics:
        """These statistics with workload weights by label (labels not named weigh 0)."""
        unknown = sorted(set(weights) - set(self.workloads))
        if self.workload_load is None or unknown:
            have = ", ".join(self.workloads) or "none (one workload)"
            raise MoeplaceError(f"no workload {', '.join(unknown) or 'to weigh'}; the workloads: {have}")
        return dataclasses.replace(
            self, workload_weights=tuple(float(weights.get(label, 0.0)) for label in self.workloads)
        )

    def pooled_load(self) -> np.ndarray:
        """int64 ``[L, N]``: the load solvers fit (class docstring): ``load``, or with workloads
        their shares pooled by weight, ``POOLED_TOTAL`` a layer."""
        if self.workload_load is None:
            return self.load
        return self._pooled(self._shares(slice(None)))

    def _shares(self, layers: int | slice) -> np.ndarray:
        """float ``[W, ..., N]``: each workload's share of the activations of MoE layer(s) ``layers``."""
        counts = self.workload_load[:, layers]
        totals = counts.sum(axis=-1, keepdims=True)
        return counts / np.where(totals > 0, totals, 1)

    def _pooled(self, shares: np.ndarray) -> np.ndarray:
        """int64 ``[..., N]``: ``shares`` ``[W, ..., N]`` pooled by weight, ``POOLED_TOTAL`` a layer."""
        return np.rint(np.einsum("w,w...->...", self.weights, shares) * POOLED_TOTAL).astype(np.int64)

    @property
    def load_only(self) -> bool:
        return self.coact is None

    def layer(self, index: int) -> LayerStats:
        """Statistics of MoE layer ``index`` (position in ``meta.layer_ids``, not the model's index)."""
        coact = None if self.coact is None else self.coact[index]
        sets = None if self.topk_sets is None else self.topk_sets[index]
        if self.workload_load is None:
            return LayerStats(self.load[index], coact, self.load_resamples[index], sets)
        shares = self._shares(index)  # this layer's only
        return LayerStats(self._pooled(shares), coact, self.load_resamples[index], sets, shares, self.weights)

    def provenance(self) -> dict:
        """What a placement file records about the statistics it was planned from."""
        h = hashlib.sha256(json.dumps(self.meta.to_dict(), sort_keys=True).encode())
        for array in (self.load, self.coact, self.load_resamples, self.workload_load):
            if array is not None:
                h.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
        if self.workload_load is not None:
            h.update(json.dumps([self.workloads, self.workload_weights]).encode())
        for sets in self.topk_sets or ():
            h.update(np.ascontiguousarray(sets.sets, dtype="<i2").tobytes())
            h.update(np.ascontiguousarray(sets.counts, dtype="<i8").tobytes())
        return {
            "fingerprint": "sha256:" + h.hexdigest(),
            "tokens": self.num_tokens,
            "documents": self.num_documents,
        }

    def evidence(self) -> dict:
        """What a placement records to recognize this calibration in a held-out set: the distinct
        document hashes (statistics of a trace), or one hash a workload (load records), encoded;
        ``{}`` when neither is known (statistics files written before documents were hashed)."""
        if self.document_hashes is not None:
            return {"document_hashes": encode_hashes(self.document_hashes)}
        if self.workload_load is not None:
            return {"workload_hashes": encode_hashes(workload_hashes(self.workload_load))}
        return {}

    def __add__(self, other: Statistics) -> Statistics:
        """Statistics of the concatenation of both traces (exact)."""
        if self.meta.num_experts != other.meta.num_experts or self.meta.top_k != other.meta.top_k:
            raise MoeplaceError("cannot merge statistics of different experts or top-k")
        if self.meta.layer_ids != other.meta.layer_ids:
            raise MoeplaceError("cannot merge statistics of different MoE layers")
        same_draws = (self.resample_seed, self.resample_by) == (other.resample_seed, other.resample_by)
        if not same_draws or self.load_resamples.shape != other.load_resamples.shape:
            raise MoeplaceError("cannot merge statistics resampled with different seeds, units or counts")
        if (self.workload_load is None) != (other.workload_load is None):
            raise MoeplaceError(
                "cannot merge statistics with workloads (moeplace import sglang-load) and without"
            )
        rate = min(self.set_sample_rate, other.set_sample_rate)  # sampled by one hash: nested tables
        n, seed = self.meta.num_experts, self.resample_seed
        return dataclasses.replace(
            self,
            load=self.load + other.load,
            coact=None if self.load_only or other.load_only else self.coact + other.coact,
            topk_sets=None
            if self.topk_sets is None or other.topk_sets is None
            else tuple(
                TopkSets.merged([a.sampled(rate, n, seed), b.sampled(rate, n, seed)])
                for a, b in zip(self.topk_sets, other.topk_sets, strict=True)
            ),
            set_sample_rate=rate,
            load_resamples=self.load_resamples + other.load_resamples,
            document_hashes=None
            if self.document_hashes is None or other.document_hashes is None
            else np.concatenate([self.document_hashes, other.document_hashes]),
            num_tokens=self.num_tokens + other.num_tokens,
            num_documents=self.num_documents + other.num_documents,
            **merged_workloads(self, other),
        )


def merged_workloads(a: Statistics, b: Statistics) -> dict:
    """The workload fields of ``a + b``: labels of both in order of appearance, the loads of a
    label both have summed (shards of one workload), weights reset to equal."""
    if a.workload_load is None:
        return {}
    labels = list(a.workloads) + [label for label in b.workloads if label not in a.workloads]
    load = np.zeros((len(labels), *a.load.shape), np.int64)
    for stats in (a, b):
        for label, counts in zip(stats.workloads, stats.workload_load, strict=True):
            load[labels.index(label)] += counts
    return {"workloads": tuple(labels), "workload_load": load, "workload_weights": ()}


def row_keys(rows: np.ndarray, bits: int) -> list[np.ndarray]:
    """int16 rows ``[H, k]`` of ids in ``[-1, 2^bits - 1)`` packed into uint64 keys, first column
    most significant, ``64 // bits`` columns a key: comparing the keys in order compares the rows."""
    digits = (rows.astype(np.int64) + 1).astype(np.uint64)  # -1 (padding) .. -> 0 ..
    per_key = 64 // bits
    keys = []
    for start in range(0, rows.shape[1], per_key):
        key = np.zeros(rows.shape[0], np.uint64)
        for column in range(start, min(start + per_key, rows.shape[1])):
            key = (key << np.uint64(bits)) | digits[:, column]
        keys.append(key)
    return keys


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_inverse=True)`` for int16 ``[H, k]`` rows, several times faster.

    The rows are packed into as few uint64 keys as their largest id allows and sorted by those
    keys: the same lexicographic order, exactly.
    """
    bits = max(1, int(rows.max(initial=-1)) + 1).bit_length()
    keys = row_keys(rows, bits)
    order = np.argsort(keys[0], kind="stable") if len(keys) == 1 else np.lexsort(keys[::-1])
    ordered = [key[order] for key in keys]
    new = np.ones(rows.shape[0], bool)
    if rows.shape[0]:
        new[1:] = np.any([key[1:] != key[:-1] for key in ordered], axis=0)
    group = np.cumsum(new) - 1
    inverse = np.empty(rows.shape[0], np.int64)
    inverse[order] = group
    return rows[order[new]], inverse


def set_uniforms(rows: np.ndarray, num_experts: int, seed: int) -> np.ndarray:
    """A uniform in [0, 1) per top-k set (int16 rows ``[H, k]``, sorted), a keyed hash of the set
    alone (splitmix64 over its packed keys): the same set gets the same number in every shard."""
    state = np.full(rows.shape[0], _splitmix64(np.uint64(seed) + np.uint64(0x5EED)), np.uint64)
    for key in row_keys(rows, num_experts.bit_length()):
        state = _splitmix64(state ^ key)
    return (state >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _splitmix64(x):
    """Steele et al.'s splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def compute_statistics(
    trace: Trace,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    resample_by: str = "documents",
    chunk_tokens: int = 1 << 16,
    set_tokens: int = DEFAULT_SET_TOKENS,
    threads: int = os.cpu_count() or 1,
) -> Statistics:
    """Accumulate per-layer statistics of ``trace``, reading it a chunk of documents at a time.

    Vectorized over tokens: per layer and chunk, the top-k rows sorted once, then one ``bincount``
    for loads, one over the ``k(k-1)/2`` expert pairs of every token, and one per (document, expert)
    for the resamples (``resample_by``: see ``document_weights``). Distinct top-k sets are kept for
    all tokens when the trace has at most ``set_tokens`` of them, else sampled set by set (module
    docstring) to about that many. Layers are counted on ``threads`` threads (NumPy releases the GIL
    in its loops); each thread writes its own layers' counts only, so the result does not depend on
    the thread count.
    """
    if not 0 <= resamples <= MAX_RESAMPLES:
        raise MoeplaceError(f"resamples must be between 0 and {MAX_RESAMPLES}, got {resamples}")
    if resample_by not in RESAMPLE_UNITS:
        raise MoeplaceError(f"resamples draw one of {', '.join(RESAMPLE_UNITS)}, not {resample_by!r}")
    n, num_layers = trace.meta.num_experts, trace.num_layers
    rate = 1.0 if trace.num_tokens <= set_tokens else set_tokens / trace.num_tokens
    counts = _Counts.zeros(num_layers, n, trace.meta.top_k, resamples)
    offsets = trace.doc_offsets
    hashes = []
    for chunk in layer_chunks(trace, chunk_tokens, threads=threads):
        first, end = chunk.docs
        doc_offsets = offsets[first : end + 1] - offsets[first]  # int [docs+1] within the chunk
        hashes.append(routing_hashes(chunk.ids, doc_offsets))  # read once
        chunk.by_layer.sort(axis=-1)  # the pass's own copy
        chunk.map(
            functools.partial(
                counts.add_chunk,
                padded=bool(chunk.by_layer[..., 0].min(initial=0) < 0),  # sorted: padding comes first
                doc_base=np.repeat(np.arange(end - first) * n, np.diff(doc_offsets))[:, None],
                weights=document_weights(trace, first, end, resamples, seed, resample_by),
                rate=rate,
                seed=seed,
            )
        )
    with layer_pool(num_layers, threads) as pool:
        topk_sets = tuple(pool.map(counts.topk_sets, range(num_layers)))
    upper = counts.pairs.reshape(num_layers, n, n)
    return Statistics(
        meta=trace.meta,
        load=counts.load,
        coact=upper + upper.transpose(0, 2, 1),
        load_resamples=counts.load_resamples,
        num_tokens=trace.num_tokens,
        num_documents=trace.num_documents,
        resample_seed=seed,
        topk_sets=topk_sets,
        set_sample_rate=rate,
        resample_by=resample_by,
        document_hashes=np.concatenate([np.zeros(0, np.uint64), *hashes]),
    )


@dataclasses.dataclass
class _Counts:
    """Running sums of ``compute_statistics``: ``load [L, N]``, ``pairs [L, N*N]`` (upper triangle),
    ``load_resamples [L, B, N]``, and per layer the sorted top-k rows kept so far."""

    load: np.ndarray
    pairs: np.ndarray
    load_resamples: np.ndarray
    set_rows: list[list[np.ndarray]]
    first_slot: np.ndarray
    second_slot: np.ndarray

    @classmethod
    def zeros(cls, num_layers: int, n: int, k: int, resamples: int) -> _Counts:
        return cls(
            np.zeros((num_layers, n), np.int64),
            np.zeros((num_layers, n * n), np.int64),
            np.zeros((num_layers, resamples, n), np.int64),
            [[] for _ in range(num_layers)],
            *np.triu_indices(k, 1),
        )

    def add_chunk(self, layer, rows, *, padded, doc_base, weights, rate, seed) -> None:
        """Add layer ``layer`` of a chunk: its ``rows`` int16 ``[t, k]``, each sorted ascending,
        ``doc_base`` int ``[t, 1]`` = the token's document in the chunk x N, ``weights [docs, B]``."""
        n = self.load.shape[1]
        x = rows.astype(np.intp)
        a, b = x[:, self.first_slot], x[:, self.second_slot]
        if padded:
            valid = x >= 0
            self.load[layer] += np.bincount(x[valid], minlength=n)
            self.pairs[layer] += np.bincount((a * n + b)[a >= 0], minlength=n * n)  # a < b: b valid too
            by_doc = (doc_base + x)[valid]
            rows = rows[rows[:, -1] >= 0]
        else:  # the common case: every slot chose an expert, no masks
            self.load[layer] += np.bincount(x.ravel(), minlength=n)
            self.pairs[layer] += np.bincount((a * n + b).ravel(), minlength=n * n)
            by_doc = (doc_base + x).ravel()
        if weights.shape[1]:
            docs = weights.shape[0]
            self.load_resamples[layer] += weights.T @ np.bincount(by_doc, minlength=docs * n).reshape(docs, n)
        if rate < 1.0:
            rows = rows[set_uniforms(rows, n, seed) < rate]
        self.set_rows[layer].append(rows)

    def topk_sets(self, layer: int) -> TopkSets:
        """Layer ``layer``'s distinct sets; frees its rows (at scale they are GiBs)."""
        rows, self.set_rows[layer] = self.set_rows[layer], []
        return TopkSets.of_rows(np.concatenate(rows))


def document_weights(
    trace: Trace, first: int, end: int, resamples: int, seed: int, by: str = "documents"
) -> np.ndarray:
    """Poisson(1) bootstrap weights, int64 ``[end - first, resamples]``, for documents first..end-1.

    ``by="documents"``: each document drawn on its own, so a resample has the calibration trace's
    mix of traffic. ``by="labels"``: one draw per label group (``Trace.doc_groups``) shared by all
    its documents, a cluster bootstrap over kinds of traffic: a resample leaves some kinds out and
    doubles others, the shifts of mix a load cap on these resamples must survive.

    The weights are a function of the document's content (or its label group) and ``seed`` only
    (a keyed BLAKE2b digest read as uniforms), so any sharding of a trace gives every document the
    same weights.
    """
    weights = np.zeros((end - first, resamples), np.int64)
    if not resamples:
        return weights
    key = seed.to_bytes(8, "little")
    offsets = trace.doc_offsets
    digests = bytearray()
    groups = groups_of(trace.doc_labels[first:end]) if by == "labels" else None  # this chunk's only
    for doc in range(first, end):  # one hash per document, not per token
        if groups is not None:
            content = b"label group:" + groups[doc - first].encode()
        else:
            content = np.ascontiguousarray(
                trace.topk_ids[offsets[doc] : offsets[doc + 1]], dtype="<i2"
            ).tobytes()
        digests += hashlib.blake2b(content, key=key, digest_size=2 * resamples).digest()
    uniforms = np.frombuffer(bytes(digests), dtype="<u2").reshape(end - first, resamples) / 65536.0
    return np.searchsorted(_POISSON1_CDF, uniforms, side="right").astype(np.int64)


def expert_load(trace: Trace) -> np.ndarray:
    """Activations per expert and MoE layer, int64 ``[L, N]``, a chunk of documents at a time."""
    n = trace.meta.num_experts
    load = np.zeros((trace.num_layers, n), np.int64)

    def count(layer: int, ids: np.ndarray) -> None:
        """Add a chunk's rows ``ids`` int16 ``[t, k]`` to ``layer``'s load (its row only)."""
        load[layer] += np.bincount(ids[ids >= 0], minlength=n)

    for chunk in layer_chunks(trace):
        chunk.map(count)
    return load


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative ``values`` (0 = all equal, 1 = all on one)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.sum() == 0:
        return 0.0
    n = x.shape[0]
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


@dataclasses.dataclass(frozen=True)
class LoadSkew:
    """How uneven one layer's expert load is: the shape solvers must balance.

    Attributes:
        max_mean: hottest expert over the mean.
        max_min: hottest over coldest (inf with a dead expert).
        gini: Gini coefficient (0 even, 1 all on one expert).
        top_decile_share: share of activations taken by the busiest 10% of experts.
        dead: experts never selected.
    """

    max_mean: float
    max_min: float
    gini: float
    top_decile_share: float
    dead: int


def load_skew(load: np.ndarray) -> LoadSkew:
    """The ``LoadSkew`` of one layer's expert load, int ``[N]``."""
    n = load.shape[0]
    ordered = np.sort(load.astype(np.float64))
    total = ordered.sum()
    if not total:
        return LoadSkew(0.0, 0.0, 0.0, 0.0, n)
    return LoadSkew(
        max_mean=float(ordered[-1] * n / total),
        max_min=float(ordered[-1] / ordered[0]) if ordered[0] else float("inf"),
        gini=gini(ordered),
        top_decile_share=float(ordered[-max(1, n // 10) :].sum() / total),
        dead=int(np.count_nonzero(ordered == 0)),
    )

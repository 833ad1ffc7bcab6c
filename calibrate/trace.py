"""Routing traces: the experts each token used at each MoE layer, grouped into documents."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from moeplace.errors import MoeplaceError

NO_EXPERT = -1  # padding marker in topk_ids: the slot selected no expert
# Sane limits for what metadata may claim, checked before anything is sized by it: expert ids are
# int16; the largest models have ~100 layers and a few hundred experts.
MAX_EXPERTS = 1 << 15
MAX_LAYERS = 4096


@dataclasses.dataclass(frozen=True)
class TraceMeta:
    """What a trace was recorded from. ``layer_ids[i]`` is the model's layer index of MoE layer i.

    ``num_hidden_layers`` counts all the model's layers, dense ones included (engines such as SGLang
    want a placement row for each); ``None`` when the source did not say. ``routing_groups`` G and
    ``groups_per_token`` K describe group-limited routing (DeepSeek-V3's ``n_group``, ``topk_group``):
    the experts form G groups of N / G consecutive ids and a token's experts come from at most K
    groups; ``None`` for plain top-k routing.
    """

    model: str
    num_experts: int
    top_k: int
    layer_ids: tuple[int, ...]
    phase: str = "unknown"  # prefill | decode | mixed | unknown
    source: str = ""
    license: str = ""
    note: str = ""
    num_hidden_layers: int | None = None
    routing_groups: int | None = None
    groups_per_token: int | None = None

    def __post_init__(self):
        """Refuse metadata no model has, before anything is sized by it."""
        if not 1 <= self.num_experts <= MAX_EXPERTS or not 1 <= self.top_k <= self.num_experts:
            raise MoeplaceError(
                f"metadata has num_experts={self.num_experts}, top_k={self.top_k}; "
                f"need 1 <= top_k <= num_experts <= {MAX_EXPERTS}"
            )
        if not self.layer_ids:
            raise MoeplaceError("metadata lists no MoE layer")
        if not all(0 <= layer < MAX_LAYERS for layer in self.layer_ids):
            raise MoeplaceError(f"metadata layer_ids must be model layer indices in 0..{MAX_LAYERS - 1}")
        if self.num_hidden_layers is not None and not 1 <= self.num_hidden_layers <= MAX_LAYERS:
            raise MoeplaceError(f"metadata num_hidden_layers must be in 1..{MAX_LAYERS}")
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise MoeplaceError(f"metadata layer_ids repeat a layer: {list(self.layer_ids)}")
        if self.num_hidden_layers is not None and self.num_hidden_layers <= max(self.layer_ids, default=-1):
            raise MoeplaceError(
                f"metadata num_hidden_layers={self.num_hidden_layers}, "
                f"but MoE layer {max(self.layer_ids)} exists"
            )

        self._check_groups()

    def _check_groups(self) -> None:
        groups, per_token = self.routing_groups, self.groups_per_token
        if groups is None and per_token is None:
            return
        if groups is None or per_token is None:
            raise MoeplaceError("metadata routing_groups and groups_per_token go together")
        if not 2 <= groups <= self.num_experts or self.num_experts % groups:
            raise MoeplaceError(
                f"metadata routing_groups={groups} must divide the {self.num_experts} experts"
            )
        if not 1 <= per_token < groups or self.top_k > per_token * (self.num_experts // groups):
            raise MoeplaceError(
                f"metadata groups_per_token={per_token} must be in 1..{groups - 1} and its groups must hold "
                f"the top-{self.top_k} experts"
            )

    @property
    def group_limit(self) -> tuple[int, int] | None:
        """(G, K) of group-limited routing, or None."""
        return None if self.routing_groups is None else (self.routing_groups, self.groups_per_token)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_ids"] = list(self.layer_ids)
        for field in ("num_hidden_layers", "routing_groups", "groups_per_token"):
            if d[field] is None:  # absent, not null: fingerprints of older traces stay
                del d[field]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TraceMeta:
        """Build from a JSON object; raises ``MoeplaceError`` naming the missing or bad field."""
        if not isinstance(d, dict):
            raise MoeplaceError("metadata is not a JSON object")
        missing = [f for f in ("model", "num_experts", "top_k", "layer_ids") if f not in d]
        if missing:
            raise MoeplaceError(f"metadata lacks {', '.join(missing)}")
        try:
            meta = cls(
                model=str(d["model"]),
                num_experts=_as_int(d["num_experts"], "num_experts"),
                top_k=_as_int(d["top_k"], "top_k"),
                layer_ids=tuple(_as_int(x, "layer_ids") for x in d["layer_ids"]),
                **{f: str(d[f]) for f in ("phase", "source", "license", "note") if f in d},
                **{
                    f: None if d.get(f) is None else _as_int(d[f], f)
                    for f in ("num_hidden_layers", "routing_groups", "groups_per_token")
                },
            )
        except TypeError as exc:
            raise MoeplaceError(f"bad metadata: {exc}") from None
        return meta


def _as_int(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise MoeplaceError(f"metadata {name} must be integers, got {x!r}")
    return int(x)


def groups_of(labels: np.ndarray) -> np.ndarray:
    """str ``[D]``: each label up to its first ``/``, the kind of traffic a document is (gpt-oss's
    ``dataset/category/...`` -> the dataset; ESFT's task domain as it is)."""
    return np.array([label.split("/", 1)[0] for label in labels.tolist()], dtype=str)


@dataclasses.dataclass(frozen=True)
class Trace:
    """A routing trace.

    Attributes:
        topk_ids: int16 ``[T, L, k]`` logical expert ids per token and MoE layer; ``-1`` = none.
            May be a read-only memory map, so large traces are read in chunks.
        doc_offsets: int64 ``[D+1]``; document d holds tokens ``doc_offsets[d]:doc_offsets[d+1]``.
        doc_labels: str ``[D]``, a label per document (dataset, domain, ...).
        meta: what the trace was recorded from.
    """

    topk_ids: np.ndarray
    doc_offsets: np.ndarray
    doc_labels: np.ndarray
    meta: TraceMeta

    @property
    def num_tokens(self) -> int:
        return int(self.topk_ids.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.topk_ids.shape[1])

    @property
    def num_documents(self) -> int:
        return int(self.doc_offsets.shape[0] - 1)

    @property
    def doc_groups(self) -> np.ndarray:
        """str ``[D]``: each document's label group (``groups_of``)."""
        return groups_of(self.doc_labels)

    def document_chunks(self, max_tokens: int = 1 << 16) -> Iterator[tuple[int, int]]:
        """Yield ``(first_doc, end_doc)`` ranges of whole documents, each about ``max_tokens``.

        A range holds one document at least, so a document longer than ``max_tokens`` is one chunk.
        """
        offsets = self.doc_offsets
        first = 0
        while first < self.num_documents:
            limit = offsets[first] + max_tokens
            end = max(first + 1, int(np.searchsorted(offsets, limit, side="right")) - 1)
            yield first, end
            first = end

    def select_documents(self, docs: np.ndarray) -> Trace:
        """A new in-memory trace of documents ``docs`` (int ``[D']``), in the given order."""
        docs = np.asarray(docs, dtype=np.int64)
        starts, ends = self.doc_offsets[docs], self.doc_offsets[docs + 1]
        lengths = ends - starts
        parts = [self.topk_ids[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        topk = np.concatenate(parts) if parts else self.topk_ids[:0].copy()
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Trace(np.ascontiguousarray(topk), offsets, self.doc_labels[docs], self.meta)

    def provenance(self) -> dict:
        """What a placement file records about a trace it was fit or scored on."""
        return {"fingerprint": self.fingerprint(), "tokens": self.num_tokens, "documents": self.num_documents}

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the content (metadata, documents, ids), whatever the file format."""
        h = hashlib.sha256()
        h.update(json.dumps(self.meta.to_dict(), sort_keys=True).encode())
        h.update(self.doc_offsets.astype("<i8").tobytes())
        h.update("\x00".join(map(str, self.doc_labels.tolist())).encode())
        for first, end in self.document_chunks(1 << 18):
            lo, hi = self.doc_offsets[first], self.doc_offsets[end]
            h.update(np.ascontiguousarray(self.topk_ids[lo:hi], dtype="<i2").tobytes())
            release_pages(self.topk_ids)
        return "sha256:" + h.hexdigest()


@dataclasses.dataclass(frozen=True)
class LayerChunk:
    """One chunk of a pass over a trace's MoE layers (``layer_chunks``).

    Attributes:
        tokens: the trace's tokens in the chunk: a ``slice`` of whole documents, or int ``[t]``
            token indices, ascending.
        docs: ``(first_doc, end_doc)``: the chunk holds documents ``first_doc..end_doc-1`` whole;
            None for a chunk of given tokens.
        ids: int16 ``[t, L, k]`` the chunk's expert ids, token-major as stored (may be a view of
            the trace: read it, do not write it).
        by_layer: int16 ``[L, t, k]`` the same ids layer-major, a contiguous copy: ``by_layer[l]``
            holds MoE layer l's rows together, and the caller may reorder them in place.
    """

    tokens: slice | np.ndarray
    docs: tuple[int, int] | None
    ids: np.ndarray
    by_layer: np.ndarray
    pool: ThreadPoolExecutor = dataclasses.field(repr=False)

    def map(self, visit: Callable[[int, np.ndarray], Any]) -> list:
        """``[visit(layer, by_layer[layer]) for layer in range(L)]``, the layers on the pass's threads.

        NumPy releases the GIL in its loops, so layers run at once; ``visit`` must write layer
        ``layer``'s results only, so that they do not depend on the thread count.
        """
        return list(self.pool.map(visit, range(self.by_layer.shape[0]), self.by_layer))


def layer_chunks(
    trace: Trace,
    chunk_tokens: int = 1 << 16,
    *,
    tokens: Iterable[np.ndarray] | None = None,
    threads: int = os.cpu_count() or 1,
) -> Iterator[LayerChunk]:
    """A pass over ``trace`` a chunk at a time, for work on each MoE layer of a chunk on threads.

    The chunks are ``trace.document_chunks(chunk_tokens)``, whole documents of about
    ``chunk_tokens`` tokens in order; or, given ``tokens``, each of its int ``[t]`` arrays of token
    indices (ascending, so a memory-mapped trace is read forward). Each is read once, token-major
    and layer-major (``LayerChunk``), and ``LayerChunk.map`` runs a function on each of its layers
    on up to ``threads`` threads, one pool for the whole pass. Memory stays at about two copies of a
    chunk: after each, the pages of a memory-mapped trace read so far are released.
    """
    offsets = trace.doc_offsets
    if tokens is None:
        chunks = (
            (slice(int(offsets[first]), int(offsets[end])), (first, end))
            for first, end in trace.document_chunks(chunk_tokens)
        )
    else:
        chunks = ((selection, None) for selection in tokens)
    with layer_pool(trace.num_layers, threads) as pool:
        for selection, docs in chunks:
            ids = np.asarray(trace.topk_ids[selection])
            # copy(), not ascontiguousarray: with one layer that returns a view of the trace, which a
            # caller sorting ``by_layer`` in place would reorder
            yield LayerChunk(selection, docs, ids, ids.transpose(1, 0, 2).copy(), pool)
            release_pages(trace.topk_ids)


def layer_pool(num_layers: int, threads: int) -> ThreadPoolExecutor:
    """Threads for work on each of ``num_layers`` layers: ``threads``, at most one a layer."""
    return ThreadPoolExecutor(max_workers=max(1, min(threads, num_layers)))


def check_trace(trace: Trace) -> None:
    """Raise ``MoeplaceError`` unless the arrays agree with each other and with the metadata.

    Scans the ids in chunks: every id in ``[-1, num_experts)`` and no expert twice in one token.
    """
    meta, topk = trace.meta, trace.topk_ids
    if topk.ndim != 3:
        raise MoeplaceError(f"topk_ids has shape {topk.shape}; expected [tokens, layers, top_k]")
    if topk.dtype != np.int16:
        raise MoeplaceError(f"topk_ids has dtype {topk.dtype}; expected int16")
    if topk.shape[1] != len(meta.layer_ids):
        raise MoeplaceError(
            f"topk_ids has {topk.shape[1]} layers but metadata lists {len(meta.layer_ids)} layer_ids"
        )
    if topk.shape[2] != meta.top_k:
        raise MoeplaceError(f"topk_ids has {topk.shape[2]} slots per token but top_k={meta.top_k}")
    offsets = check_doc_offsets(trace.doc_offsets, topk.shape[0])
    if trace.doc_labels.shape != (offsets.shape[0] - 1,):
        raise MoeplaceError(
            f"{trace.doc_labels.shape[0]} document labels for {offsets.shape[0] - 1} documents"
        )
    if topk.shape[0] == 0:
        raise MoeplaceError("the trace holds no tokens")
    routed = np.zeros(topk.shape[1], bool)
    for first, end in trace.document_chunks(1 << 16):
        chunk = np.asarray(topk[offsets[first] : offsets[end]])
        check_ids(chunk, meta.num_experts, int(offsets[first]))
        routed |= (chunk >= 0).any(axis=(0, 2))
        release_pages(topk)
    if not routed.all():
        layer = meta.layer_ids[int(np.argmin(routed))]
        raise MoeplaceError(f"MoE layer {layer} routes no token to an expert (all padding)")


def release_pages(ids: np.ndarray) -> None:
    """Let go of the pages of a memory-mapped trace array read so far (they stay in the OS page
    cache); a no-op for arrays in memory. Passes over a trace larger than memory call it after each
    chunk, so the process's resident memory stays at one chunk, not the whole file."""
    mapping = ids.base if isinstance(ids, np.memmap) else None
    if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def check_doc_offsets(doc_offsets, num_tokens: int) -> np.ndarray:
    """``doc_offsets`` as int64 ``[D+1]`` rising from 0 to ``num_tokens``, else ``MoeplaceError``."""
    offsets = np.asarray(doc_offsets)
    if offsets.ndim != 1 or offsets.shape[0] < 2 or offsets.dtype.kind not in "iu":
        raise MoeplaceError(f"doc_offsets must be integers [documents+1], got {offsets.shape}")
    offsets = offsets.astype(np.int64, copy=False)
    if offsets[0] != 0 or offsets[-1] != num_tokens or np.any(np.diff(offsets) < 0):
        raise MoeplaceError(
            f"doc_offsets must rise from 0 to the token count {num_tokens}; got {offsets[0]} .. {offsets[-1]}"
        )
    return offsets


def check_ids(ids: np.ndarray, num_experts: int, first_token: int = 0) -> None:
    """Raise ``MoeplaceError`` unless ids ``[t, L, k]`` are in ``[-1, num_experts)`` and no token
    selects one expert twice in a layer. ``first_token`` numbers the tokens in the message."""
    bad = (ids < NO_EXPERT) | (ids >= num_experts)
    if bad.any():
        token = first_token + int(np.argwhere(bad)[0][0])
        raise MoeplaceError(f"token {token} has expert id {int(ids[bad][0])}, outside [0, {num_experts})")
    ordered = np.sort(ids, axis=-1)
    repeat = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] != NO_EXPERT)
    if repeat.any():
        token, layer = (int(v) for v in np.argwhere(repeat)[0][:2])
        raise MoeplaceError(f"token {first_token + token} selects one expert twice at MoE layer {layer}")

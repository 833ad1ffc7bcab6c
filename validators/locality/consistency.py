"""Local routing consistency of one MoE layer: SRP and SCH of Liang et al., "Not All Models Suit Expert
Offloading: On Local Routing Consistency of Mixture-of-Expert Models" (arXiv 2505.16056).

Shapes: T tokens, k slots, N experts, D documents, S segments, m = ``segment_length`` tokens.

Segments. A segment is m consecutive tokens of one document. As in the paper's code
(github.com/ljcleo/moe-lrc, ``src/30_srp_calc.py``, ``src/40_sch_calc.py``) the segments are all
windows of m tokens at every start position (stride 1): a document of L >= m tokens holds L - m + 1
overlapping segments, so tokens near a document's ends sit in fewer segments than tokens in the middle.
A segment never crosses a document boundary, and a document shorter than m holds no segment (the paper
skips a sequence shorter than the segment, too). ``stride=m`` gives disjoint segments instead; a
document's last L mod m tokens, too few for a whole segment, are then left out.

Ids only. A trace keeps the top-k ids, not router scores; so does the paper: it turns router logits into
a 0/1 top-k mask before either metric, every activation weighing 1. Empty slots (``-1``) are no
activation: such a token simply has fewer than k activations. Sums run over all segments before dividing
(hits / accesses, matches / predictions), as the paper's SRP does; its SCH averages per segment, which is
the same number when every token has k experts.

SRP, segment routing best performance. Let ``c[s, e]`` (0..m) count the tokens of segment s that route
to expert e. A segment router with threshold rho routes every token of s to the fixed set
``{e : c[s, e] >= rho}``. Over all segments and experts:

    matches(rho) = sum_{s,e: c >= rho} c[s, e]          activations the fixed sets cover
    preds(rho)   = m * #{(s, e): c[s, e] >= rho}        expert slots the fixed sets route
    acts         = sum_{s,e} c[s, e]                    activations the model made
    F1(rho)      = 2 matches / (preds + acts)           (harmonic mean of matches/preds, matches/acts)
    SRP          = max over rho in 0..m of F1(rho)

This is the paper's code (micro-F1 pooled over segments and experts, one threshold per layer; rho = 0
routes to all N experts). At m = 1 the router at rho = 1 is the token's own top-k, so SRP = 1.

SCH, segment cache best hit rate, follows the paper's first version (v1 abstract: "the optimal
segment-level cache hit rate under a given cache size limit"; code ``src/40_sch_calc.py``): a segment is
served by a cache of C experts loaded once for the whole segment; the best such cache holds the C experts
the segment uses most, so

    SCH(C) = sum_s (sum of the C largest c[s, e] over e) / acts.

It is 1 for C >= the number of distinct experts in every segment (so at m = 1 with C >= k) and rises
with C. The paper's later versions (v3+) redefine SCH as a token-by-token cache that, with m tokens of
lookahead, evicts the expert used least in the next m tokens (ties: least recently used); that needs a
sequential pass over the tokens and is not what these functions compute.

Cost: counts come from prefix sums over blocks of tokens (``_BLOCK_ELEMENTS`` counts at a time): time
O(T N) per call whatever m is (SCH adds a sort or partition of N counts per segment), memory
O(T + _BLOCK_ELEMENTS); the only Python loop is over blocks, never per token or per segment.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np

from moeplace.calibrate.trace import NO_EXPERT, check_doc_offsets, check_ids
from moeplace.errors import MoeplaceError

__all__ = [
    "segment_cache_best_hit_rate",
    "segment_cache_hit_curve",
    "segment_routing_best_performance",
    "segment_routing_f1",
    "segment_starts",
]

_BLOCK_ELEMENTS = 1 << 21  # token x expert counts held at once while scanning a trace


def _positive_int(value, name: str) -> int:
    """``value`` as an ``int`` >= 1, else ``MoeplaceError``."""
    if isinstance(value, bool | np.bool_):
        raise MoeplaceError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise MoeplaceError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise MoeplaceError(f"{name} must be a positive integer, got {number}")
    return number


def _check_ids(topk_ids, num_experts: int) -> np.ndarray:
    """``topk_ids`` as an integer ``[T, k]`` array with ids in ``[-1, N)``, no expert twice in a token."""
    ids = np.asarray(topk_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise MoeplaceError(f"topk_ids must be integers [tokens, top_k], got {ids.dtype} {ids.shape}")
    check_ids(ids[:, None, :], num_experts)  # the trace's own check, on one layer
    return ids


def segment_starts(doc_offsets, segment_length: int, stride: int = 1) -> np.ndarray:
    """First token of every segment, int64 ``[S]`` ascending.

    Document d contributes starts ``doc_offsets[d] + j * stride`` for every j with the whole segment
    ``[start, start + segment_length)`` inside the document; a document shorter than ``segment_length``
    contributes none.
    """
    m = _positive_int(segment_length, "segment_length")
    stride = _positive_int(stride, "stride")
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    per_doc = np.where(lengths >= m, (lengths - m) // stride + 1, 0)
    total = int(per_doc.sum())
    first = np.cumsum(per_doc) - per_doc  # index of each document's first segment
    within = np.arange(total, dtype=np.int64) - np.repeat(first, per_doc)
    return np.repeat(offsets[:-1], per_doc) + stride * within


def _segment_counts(ids: np.ndarray, starts: np.ndarray, num_experts: int, m: int) -> Iterator[np.ndarray]:
    """Per-segment expert counts ``c``: int32 ``[N, B]`` (values 0..m) for blocks of B segments; the
    transpose ``[B, N]`` is the C-contiguous one.

    Each block marks the tokens it spans in a 0/1 ``[N, tokens]`` table (ids are distinct per token),
    takes prefix sums over tokens and differences them at the segment ends:
    ``c[:, s] = P[:, start_s + m] - P[:, start_s]``. Expert-major keeps the prefix sum contiguous.
    """
    max_span = max(_BLOCK_ELEMENTS // num_experts, 1)
    first = 0
    while first < starts.shape[0]:
        lo = int(starts[first])
        # segments whose tokens all fall in [lo, lo + max(max_span, m)); at least one segment per block
        end = max(int(np.searchsorted(starts, lo + max(max_span - m, 0), side="right")), first + 1)
        hi = int(starts[end - 1]) + m
        block = ids[lo:hi]
        valid = block != NO_EXPERT
        rows = np.broadcast_to(np.arange(hi - lo)[:, None], block.shape)
        prefix = np.zeros((num_experts, hi - lo + 1), dtype=np.int32)
        prefix[block[valid], rows[valid] + 1] = 1
        np.cumsum(prefix, axis=1, out=prefix)
        local = starts[first:end] - lo
        yield prefix[:, local + m] - prefix[:, local]
        first = end


def _prepare(topk_ids, doc_offsets, num_experts, segment_length, stride):
    """Checked ``(ids, starts, N, m)``; ``MoeplaceError`` when no document holds a whole segment."""
    n = _positive_int(num_experts, "num_experts")
    m = _positive_int(segment_length, "segment_length")
    ids = _check_ids(topk_ids, n)
    offsets = check_doc_offsets(doc_offsets, ids.shape[0])
    starts = segment_starts(offsets, m, stride)
    if starts.shape[0] == 0:
        raise MoeplaceError(f"no document has segment_length={m} tokens")
    return ids, starts, n, m


def segment_routing_f1(topk_ids, doc_offsets, num_experts, segment_length, *, stride=1) -> np.ndarray:
    """F1 of the threshold segment router for every threshold rho = 0..m, float64 ``[m+1]``.

    ``topk_ids``: int ``[T, k]`` expert ids (``-1`` = none); ``doc_offsets``: int ``[D+1]``;
    ``segment_length`` m in tokens. Entry rho is ``2 matches(rho) / (preds(rho) + acts)`` (module
    docstring), a fraction in [0, 1]. Raises ``MoeplaceError`` for bad arguments, no whole segment, or
    segments holding no activation.
    """
    ids, starts, n, m = _prepare(topk_ids, doc_offsets, num_experts, segment_length, stride)
    hist = np.zeros(m + 1, dtype=np.int64)  # hist[v]: (segment, expert) pairs with count v
    for counts in _segment_counts(ids, starts, n, m):
        hist += np.bincount(counts.ravel(order="K"), minlength=m + 1)
    values = np.arange(m + 1, dtype=np.int64)
    matches = np.cumsum((values * hist)[::-1])[::-1]  # sum of counts >= rho
    selected = np.cumsum(hist[::-1])[::-1]  # pairs with count >= rho
    acts = int(matches[0])
    if acts == 0:
        raise MoeplaceError("the segments hold no expert activation (every slot is -1)")
    return 2.0 * matches / (m * selected + acts)


def segment_routing_best_performance(
    topk_ids, doc_offsets, num_experts, segment_length, *, stride=1
) -> float:
    """SRP: best F1, over thresholds rho = 0..m, of routing each segment to a fixed expert set.

    ``topk_ids``: int ``[T, k]`` (``-1`` = none); ``doc_offsets``: int64 ``[D+1]``; ``num_experts`` N;
    ``segment_length`` m in tokens; ``stride`` tokens between segment starts (1 = every window, as the
    paper; m = disjoint segments). Returns a fraction in [0, 1]; 1 = every segment's tokens all use the
    same experts. Definition, tails and ids-only reading: module docstring.
    """
    return float(segment_routing_f1(topk_ids, doc_offsets, num_experts, segment_length, stride=stride).max())


def segment_cache_hit_curve(topk_ids, doc_offsets, num_experts, segment_length, *, stride=1) -> np.ndarray:
    """SCH for every cache size C = 1..N, float64 ``[N]`` (entry C-1), non-decreasing, last entry 1.

    Sorts each segment's counts once; cheaper than N calls of ``segment_cache_best_hit_rate``.
    """
    ids, starts, n, m = _prepare(topk_ids, doc_offsets, num_experts, segment_length, stride)
    ranked = np.zeros(n, dtype=np.int64)  # ranked[r]: sum over segments of the r-th largest count
    for counts in _segment_counts(ids, starts, n, m):
        ranked += np.sort(counts.T, axis=1)[:, ::-1].sum(axis=0, dtype=np.int64)
    acts = int(ranked.sum())
    if acts == 0:
        raise MoeplaceError("the segments hold no expert activation (every slot is -1)")
    return np.cumsum(ranked) / acts


def segment_cache_best_hit_rate(
    topk_ids, doc_offsets, num_experts, segment_length, cache_size, *, stride=1
) -> float:
    """SCH: hit rate of the best cache of ``cache_size`` experts loaded once per segment.

    ``topk_ids``: int ``[T, k]`` (``-1`` = none); ``doc_offsets``: int64 ``[D+1]``; ``num_experts`` N;
    ``segment_length`` m in tokens; ``cache_size`` C experts (C >= N caches every expert); ``stride`` as
    in ``segment_routing_best_performance``. Returns hits / activations in [0, 1]: per segment the C
    experts it uses most are cached. Definition, tails and ids-only reading: module docstring.
    """
    c = _positive_int(cache_size, "cache_size")
    ids, starts, n, m = _prepare(topk_ids, doc_offsets, num_experts, segment_length, stride)
    hits = acts = 0
    for counts in _segment_counts(ids, starts, n, m):
        acts += int(counts.sum(dtype=np.int64))
        top = counts if c >= n else np.partition(counts.T, n - c, axis=1)[:, n - c :]
        hits += int(top.sum(dtype=np.int64))
    if acts == 0:
        raise MoeplaceError("the segments hold no expert activation (every slot is -1)")
    return hits / acts

"""A capacity-C expert cache replaying one MoE layer's routing: LRU, static LFU, co-activation
prefetch, and Belady's offline optimum as the lower bound on loads.

The model. Tokens arrive in stream order: documents back to back, and the cache persists across
them, like a server. Token t needs its set S_t of experts (the distinct ids of its row of
``topk_ids``, -1 ignored) in fast memory all at the same time. The cache holds at most C experts
between tokens and starts empty. Each (token, expert) pair is an *activation*. An activation
whose expert is not in the cache just before its token is a *demand miss*: the expert is loaded
on demand. An expert that a policy loads without a demand (only ``coact-prefetch`` does) is a
*prefetch load*, and it costs bandwidth like a demand miss.

Policies (C = ``capacity``, k = slots per token, N = ``num_experts``):

- ``lru``: the cache holds the C most recently used experts. The experts of one token are used
  at the same time. Among equal recency, the lower id counts as more recent and is kept.
- ``lfu``: static LFU. The C experts with the highest ``fit_load`` (calibration counts; ties go
  to the lower id) are pinned. Every activation of another expert is a demand miss: the expert
  is staged for its token and then dropped. The pinned experts also start cold: each one's first
  use is a (compulsory) miss, as for every other policy, so that all policies pay for the
  experts they hold. This costs at most C misses over the whole stream.
- ``coact-prefetch``: LRU, plus one step after each token that has experts. The prefetcher
  scores every expert f outside S_t by ``sum(coact[e, f] for e in S_t)`` and loads the
  ``prefetch`` (default k) best, with ties to the lower id, as the most recently used. They are
  more recent than S_t, and among themselves the lower id is more recent. A prefetched expert
  that is not in the cache once S_t is in (the state just before the prefetch) counts as one
  prefetch load. One already there only has its recency refreshed. Demand misses are counted
  as in LRU, with this recency.
- ``belady``: the offline optimum on demand loads. It knows the future and, after each token,
  keeps the C experts, among those cached before the token and those of the token, whose next
  use comes soonest (experts that are never used again go first). It may also drop a token's own
  expert right after use ("bypass": the expert is staged for its token only, which static LFU
  does as well). This greedy is optimal: the exchange argument of Belady's MIN carries over to
  sets of experts per token. The result lower-bounds the demand misses of ``lru`` and ``lfu``,
  and the total loads (demand misses + prefetch loads) of ``coact-prefetch``. A prefetcher's
  *demand* misses alone can fall below it, because prefetching hides misses by paying for loads
  ahead of time. Textbook Belady without bypass (every expert of a token stays cached after it)
  is no lower bound for static LFU (at C = k = 1, stream 0 1 0 1 with 0 pinned gives LFU 3 misses
  and no-bypass Belady 4).

No formulation of Belady was found that is both exact and vectorized. Belady is the same as
packing "reuse intervals" (an expert kept from one use to its next) under C per gap between
tokens, but solving that packing is itself sequential (greedy by end, or a min-cost flow). So
Belady loops over tokens in Python, and only on a window: the first ``max_tokens`` tokens of the
stream (a prefix, starting cold, with next uses looked up inside the window),
``DEFAULT_BELADY_TOKENS`` (20,000) unless set. :func:`simulate_policies`
scores every policy on that same window whenever ``belady`` is among them. ``CacheResult.tokens``
gives the number of tokens each result scored. Every other path is vectorized over tokens. LRU
takes a cumulative maximum of "last use" keys over a ``[tokens, N]`` block, carrying the last row
across blocks of about 2^21 entries. An activation (t, e) hits when e's key just before t is
among the C largest of that row (never-used experts are never cached).
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np

from moeplace.errors import MoeplaceError

__all__ = [
    "DEFAULT_BELADY_TOKENS",
    "POLICIES",
    "CacheResult",
    "simulate_cache",
    "simulate_policies",
]

POLICIES = ("lru", "lfu", "coact-prefetch", "belady")
DEFAULT_BELADY_TOKENS = 20_000
_BLOCK_ELEMENTS = 1 << 21  # tokens per block x N: bounds the [tokens, N] work arrays (16 MiB each)
_NEVER = np.iinfo(np.int64).min


@dataclasses.dataclass(frozen=True)
class CacheResult:
    """One policy on one layer's stream.

    Attributes:
        policy: one of ``POLICIES``.
        capacity: experts the cache holds between tokens.
        tokens: tokens scored, a prefix of the stream: all of it, or the Belady window.
        activations: distinct (token, expert) pairs scored (-1 and repeats within a token dropped).
        demand_misses: activations whose expert was not in the cache just before their token.
        prefetch_loads: experts loaded speculatively (``coact-prefetch`` only, else 0).
    """

    policy: str
    capacity: int
    tokens: int
    activations: int
    demand_misses: int
    prefetch_loads: int

    @property
    def miss_rate(self) -> float:
        """Demand misses per activation (0 when nothing was activated)."""
        return self.demand_misses / self.activations if self.activations else 0.0

    @property
    def loads_per_activation(self) -> float:
        """All loads, demand and prefetch, per activation: the bandwidth cost."""
        return (self.demand_misses + self.prefetch_loads) / self.activations if self.activations else 0.0


def simulate_cache(
    topk_ids: np.ndarray,
    capacity: int,
    policy: str,
    *,
    num_experts: int,
    fit_load: np.ndarray | None = None,
    coact: np.ndarray | None = None,
    prefetch: int | None = None,
    max_tokens: int | None = None,
    block_tokens: int | None = None,
) -> CacheResult:
    """Replay one layer's ids ``[T, k]`` (stream order, -1 = no expert) through a capacity-C cache.

    Args:
        topk_ids: int ``[T, k]`` expert ids per token of one layer.
        capacity: experts the cache holds between tokens, at least k.
        policy: ``"lru"``, ``"lfu"``, ``"coact-prefetch"`` or ``"belady"`` (see the module doc).
        num_experts: N, ids must be below it.
        fit_load: int ``[N]`` expert counts from calibration data (``lfu`` only).
        coact: int ``[N, N]`` co-activation counts from calibration data (``coact-prefetch`` only).
        prefetch: experts prefetched after each token (``coact-prefetch``), 0..capacity; default k.
        max_tokens: score only the first ``max_tokens`` tokens. ``None`` means the whole stream,
            except for ``belady``, which loops over tokens in Python and defaults to
            ``DEFAULT_BELADY_TOKENS``. To compare with Belady, use :func:`simulate_policies`,
            which puts every policy on the same window.
        block_tokens: tokens per vectorized block; the default bounds a block at about 2^21
            entries. Only the memory use and the speed depend on it.
    """
    ids = _checked_ids(topk_ids, num_experts)
    capacity = _checked_capacity(capacity, ids.shape[1])
    if policy not in POLICIES:
        raise MoeplaceError(f"unknown cache policy {policy!r}; choose from {', '.join(POLICIES)}")
    if max_tokens is None and policy == "belady":
        max_tokens = DEFAULT_BELADY_TOKENS
    if max_tokens is not None:
        if max_tokens < 1:
            raise MoeplaceError(f"max_tokens must be positive, got {max_tokens}")
        ids = ids[:max_tokens]
    if block_tokens is None:
        block_tokens = max(1, _BLOCK_ELEMENTS // num_experts)
    prefetch_loads = 0
    if policy == "lru":
        activations, misses, _ = _recency(ids, capacity, num_experts, None, 0, block_tokens)
    elif policy == "lfu":
        activations, misses = _static_lfu(ids, capacity, num_experts, fit_load)
    elif policy == "coact-prefetch":
        if prefetch is None:
            prefetch = ids.shape[1]
        if not 0 <= prefetch <= capacity:
            raise MoeplaceError(f"prefetch must be between 0 and the capacity {capacity}, got {prefetch}")
        coact = _checked_coact(coact, num_experts, ids.shape[1])
        activations, misses, prefetch_loads = _recency(
            ids, capacity, num_experts, coact, prefetch, block_tokens
        )
    else:
        activations, misses = _belady(_distinct(ids), capacity, bypass=True)
    return CacheResult(
        policy, capacity, int(ids.shape[0]), int(activations), int(misses), int(prefetch_loads)
    )


def simulate_policies(
    topk_ids: np.ndarray,
    capacity: int,
    *,
    num_experts: int,
    policies: tuple[str, ...] = POLICIES,
    fit_load: np.ndarray | None = None,
    coact: np.ndarray | None = None,
    prefetch: int | None = None,
    max_tokens: int | None = None,
    block_tokens: int | None = None,
) -> dict[str, CacheResult]:
    """``{policy: CacheResult}`` with every policy scored on the same tokens.

    If ``"belady"`` is among ``policies`` and ``max_tokens`` is ``None``, every policy is scored on
    the first ``DEFAULT_BELADY_TOKENS`` tokens. Otherwise all score the first ``max_tokens`` tokens
    (the whole stream when ``None``). Arguments are as in :func:`simulate_cache`.
    """
    if max_tokens is None and "belady" in policies:
        max_tokens = DEFAULT_BELADY_TOKENS
    return {
        policy: simulate_cache(
            topk_ids,
            capacity,
            policy,
            num_experts=num_experts,
            fit_load=fit_load,
            coact=coact,
            prefetch=prefetch,
            max_tokens=max_tokens,
            block_tokens=block_tokens,
        )
        for policy in policies
    }


# --- input checks -------------------------------------------------------------------------------


def _checked_ids(topk_ids, num_experts: int) -> np.ndarray:
    ids = np.asarray(topk_ids)
    if ids.ndim != 2:
        raise MoeplaceError(f"topk_ids must be [tokens, k] for one layer, got {ids.ndim} dims")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise MoeplaceError(f"topk_ids must hold integer expert ids, got {ids.dtype}")
    if num_experts < 1:
        raise MoeplaceError(f"num_experts must be positive, got {num_experts}")
    if ids.size and (ids.min() < -1 or ids.max() >= num_experts):
        raise MoeplaceError(
            f"topk_ids holds ids in [{ids.min()}, {ids.max()}]; expected -1 (none) or 0..{num_experts - 1}"
        )
    return ids


def _checked_capacity(capacity, top_k: int) -> int:
    if capacity < max(top_k, 1):
        raise MoeplaceError(
            f"cache capacity {capacity} is below top-k {top_k}: a token's experts must fit in the cache"
        )
    return int(capacity)


def _checked_coact(coact, num_experts: int, top_k: int) -> np.ndarray:
    if coact is None:
        raise MoeplaceError("policy 'coact-prefetch' needs coact, the [N, N] co-activation counts")
    coact = np.asarray(coact)
    if coact.shape != (num_experts, num_experts) or not np.issubdtype(coact.dtype, np.integer):
        raise MoeplaceError(
            f"coact must be int [{num_experts}, {num_experts}], got {coact.dtype} {coact.shape}"
        )
    # scores times N plus a tie-break must fit in int64
    if coact.size and int(np.abs(coact).max()) * (top_k + 1) * (num_experts + 1) >= 1 << 62:
        raise MoeplaceError("coact counts are too large to score in int64")
    return coact.astype(np.int64)


# --- shared steps -------------------------------------------------------------------------------


def _distinct(ids: np.ndarray) -> np.ndarray:
    """int64 copy of ``ids`` with each row sorted and its repeated experts set to -1."""
    rows = np.sort(ids.astype(np.int64), axis=1)
    if rows.shape[1] > 1:
        repeated = (rows[:, 1:] == rows[:, :-1]) & (rows[:, 1:] >= 0)
        rows[:, 1:][repeated] = -1
    return rows


def _cached(state: np.ndarray, capacity: int) -> np.ndarray:
    """bool like ``state``: the experts cached given per-row recency keys (-1 = never used), the
    ``capacity`` largest keys of each row."""
    num_experts = state.shape[1]
    if capacity >= num_experts:
        return state >= 0
    cutoff = np.partition(state, num_experts - capacity, axis=1)[:, num_experts - capacity]
    return state >= np.maximum(cutoff, 0)[:, None]


def _recency(ids, capacity, num_experts, coact, prefetch, block_tokens) -> tuple[int, int, int]:
    """LRU, with an optional co-activation prefetch after each token: (activations, demand misses,
    prefetch loads).

    The recency key of a use of expert e at token t is ``(2 t) N + (N - 1 - e)``, or
    ``(2 t + 1) N + (N - 1 - e)`` for a prefetch. Keys grow with time, and within one step the
    lower id has the larger key. The cache is then the C experts with the largest latest key.
    """
    reverse_id = np.arange(num_experts - 1, -1, -1, dtype=np.int64)
    last = np.full(num_experts, -1, np.int64)  # latest key per expert before the block
    activations = misses = loads = 0
    if coact is not None:
        coact = np.vstack([coact, np.zeros((1, num_experts), np.int64)])  # row N: the -1 slot
        prefetch = min(prefetch, num_experts)
    for start in range(0, ids.shape[0], block_tokens):
        rows = _distinct(ids[start : start + block_tokens])
        size = rows.shape[0]
        step = 2 * np.arange(start, start + size, dtype=np.int64)[:, None]
        token, slot = np.nonzero(rows >= 0)
        expert = rows[token, slot]
        used = np.full((size, num_experts), -1, np.int64)
        used[token, expert] = step[token, 0] * num_experts + reverse_id[expert]
        touched = used
        if coact is not None and prefetch:
            slots = np.where(rows >= 0, rows, num_experts)
            score = np.zeros((size, num_experts), np.int64)
            for column in slots.T:  # one gather per slot keeps the memory at [size, N]
                score += coact[column]
            key = score * num_experts + reverse_id  # ties to the lower id
            key[used >= 0] = _NEVER  # the fired experts are not candidates
            key[(rows < 0).all(axis=1)] = _NEVER  # nothing fired: nothing to prefetch
            best = np.argpartition(key, num_experts - prefetch, axis=1)[:, num_experts - prefetch :]
            chosen = np.take_along_axis(key, best, axis=1) != _NEVER
            p_token = np.nonzero(chosen)[0]
            p_expert = best[chosen]
            fetched = np.full((size, num_experts), -1, np.int64)
            fetched[p_token, p_expert] = (step[p_token, 0] + 1) * num_experts + reverse_id[p_expert]
            touched = np.maximum(used, fetched)
        after = np.maximum(np.maximum.accumulate(touched, axis=0), last)
        before = np.vstack([last[None, :], after[:-1]])
        last = after[-1].copy()
        hit = _cached(before, capacity)[token, expert]
        activations += expert.size
        misses += int(expert.size - hit.sum())
        if coact is not None and prefetch:
            present = _cached(np.maximum(before, used), capacity)[p_token, p_expert]
            loads += int(p_expert.size - present.sum())
    return activations, misses, loads


def _static_lfu(ids, capacity, num_experts, fit_load) -> tuple[int, int]:
    """Static LFU: (activations, demand misses), pinned experts loaded on their first use."""
    if fit_load is None:
        raise MoeplaceError("policy 'lfu' needs fit_load, the [N] expert counts from calibration data")
    fit_load = np.asarray(fit_load, dtype=np.float64)
    if fit_load.shape != (num_experts,):
        raise MoeplaceError(f"fit_load must be [{num_experts}], got shape {fit_load.shape}")
    pinned = np.zeros(num_experts, bool)
    pinned[np.argsort(-fit_load, kind="stable")[:capacity]] = True  # ties to the lower id
    counts = np.zeros(num_experts, np.int64)
    for start in range(0, ids.shape[0], 1 << 16):
        rows = _distinct(ids[start : start + (1 << 16)])
        counts += np.bincount(rows[rows >= 0], minlength=num_experts)
    return int(counts.sum()), int(counts[~pinned].sum() + np.count_nonzero(counts[pinned]))


def _next_uses(rows: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """For the distinct ids ``rows`` ``[W, k]``: each token's first index into the activation
    lists, then the experts and each one's next use (a token, or W when never used again)."""
    width = rows.shape[0]
    token, slot = np.nonzero(rows >= 0)
    expert = rows[token, slot]
    upcoming = np.full(expert.size, width, np.int64)
    order = np.lexsort((token, expert))  # by expert, then time
    again = expert[order[1:]] == expert[order[:-1]]
    upcoming[order[:-1][again]] = token[order[1:][again]]
    starts = np.searchsorted(token, np.arange(width + 1))
    return starts.tolist(), expert.tolist(), upcoming.tolist()


def _belady(rows: np.ndarray, capacity: int, bypass: bool = True) -> tuple[int, int]:
    """Belady's optimal replacement over the distinct ids ``rows`` ``[W, k]``: (activations,
    demand misses). One Python step per token: call it on a bounded window only.

    After each token, keep the ``capacity`` experts with the soonest next use among the cached
    ones and the token's own. With ``bypass=False``, the token's experts must all stay cached,
    which is the textbook rule and gives an upper bound of the optimum with bypass.
    """
    starts, experts, upcoming = _next_uses(rows)
    cache: dict[int, int] = {}  # expert -> its next use
    farthest: list[tuple[int, int]] = []  # max-heap of (-next use, -expert), stale entries skipped
    misses = 0
    for t in range(rows.shape[0]):
        first, end = starts[t], starts[t + 1]
        current = set(experts[first:end])
        for expert, upcoming_use in zip(experts[first:end], upcoming[first:end], strict=True):
            if expert not in cache:
                misses += 1
            cache[expert] = upcoming_use  # > t; the stale entry (next use t) sinks below every live one
            heapq.heappush(farthest, (-upcoming_use, -expert))
        held = []
        while len(cache) > capacity:
            entry = heapq.heappop(farthest)
            expert = -entry[1]
            if cache.get(expert) != -entry[0]:
                continue  # stale
            if not bypass and expert in current:
                held.append(entry)
                continue
            del cache[expert]
        for entry in held:
            heapq.heappush(farthest, entry)
    return len(experts), misses

"""The expert cache simulation: hand-counted streams, loop references, Belady as the lower bound."""

import itertools
from collections import OrderedDict

import numpy as np
import pytest

from moeplace.errors import MoeplaceError
from moeplace.validators.locality.cache import (
    DEFAULT_BELADY_TOKENS,
    POLICIES,
    CacheResult,
    _belady,
    _distinct,
    simulate_cache,
    simulate_policies,
)

# --- loop references (one step per token) ------------------------------------------------------


def _token_sets(ids):
    return [sorted({int(e) for e in row if e >= 0}) for row in np.asarray(ids)]


def reference_lru(ids, capacity, coact=None, prefetch=0):
    """OrderedDict LRU; a token's experts are inserted highest id first, so among one token the lower
    id is the more recent. With ``coact``: prefetch after each token. Returns (misses, loads)."""
    cache = OrderedDict()
    misses = loads = 0

    def touch(experts):
        for e in sorted(experts, reverse=True):
            cache[e] = None
            cache.move_to_end(e)
        while len(cache) > capacity:
            cache.popitem(last=False)

    for fired in _token_sets(ids):
        misses += sum(e not in cache for e in fired)
        touch(fired)
        if coact is not None and prefetch and fired:
            score = {f: sum(int(coact[e, f]) for e in fired) for f in range(coact.shape[0]) if f not in fired}
            named = sorted(score, key=lambda f: (-score[f], f))[:prefetch]
            loads += sum(f not in cache for f in named)
            touch(named)
    return misses, loads


def brute_force_optimum(ids, capacity, bypass):
    """Fewest demand misses over every cache schedule: after a token, the cache is any set of at most
    ``capacity`` experts out of the ones cached before it and its own (containing its own if not
    ``bypass``). Dynamic programming over cache states."""
    best = {frozenset(): 0}
    for fired in map(frozenset, _token_sets(ids)):
        following = {}
        for state, cost in best.items():
            cost += len(fired - state)
            pool = sorted(state | fired)
            for size in range(min(capacity, len(pool)) + 1):
                for kept in map(frozenset, itertools.combinations(pool, size)):
                    if bypass or fired <= kept:
                        following[kept] = min(following.get(kept, cost), cost)
        best = following
    return min(best.values())


def random_stream(rng, tokens, experts, top_k, pad=0.0, skew=1.0):
    """Distinct experts per token, popularity ~ rank^-skew, a fraction ``pad`` of slots set to -1."""
    weights = np.arange(1, experts + 1, dtype=float) ** -skew
    keys = rng.random((tokens, experts)) ** (1.0 / weights)  # weighted sampling without replacement
    ids = np.argsort(-keys, axis=1)[:, :top_k].astype(np.int16)
    ids[rng.random(ids.shape) < pad] = -1
    return ids


def coactivation_of(ids, experts):
    chosen = np.zeros((len(ids), experts), np.int64)
    for t, fired in enumerate(_token_sets(ids)):
        chosen[t, fired] = 1
    coact = chosen.T @ chosen
    np.fill_diagonal(coact, 0)
    return coact, chosen.sum(axis=0)


def column(values):
    return np.array(values, np.int16)[:, None]


# --- LRU ---------------------------------------------------------------------------------------


def test_lru_cyclic_stream_misses_every_time():
    result = simulate_cache(column([0, 1, 2, 0, 1, 2]), 2, "lru", num_experts=3)
    assert result == CacheResult("lru", 2, 6, 6, 6, 0)
    assert result.miss_rate == 1.0


def test_lru_repeating_pair_only_compulsory_misses():
    result = simulate_cache(column([0, 1] * 5), 2, "lru", num_experts=4)
    assert (result.activations, result.demand_misses, result.prefetch_loads) == (10, 2, 0)
    assert result.loads_per_activation == pytest.approx(0.2)


def test_lru_tie_keeps_the_lower_id():
    # token 0 uses {0, 1} together; token 1 brings 2 into a capacity-2 cache: 1 goes, 0 stays
    ids = np.array([[0, 1], [2, -1], [0, -1], [1, -1]], np.int16)
    assert simulate_cache(ids, 2, "lru", num_experts=3).demand_misses == 4  # 0, 1, 2, then 1


@pytest.mark.parametrize("seed", range(4))
def test_vectorized_lru_equals_reference(seed):
    rng = np.random.default_rng(seed)
    experts, top_k = 9, 1 + seed % 3
    ids = random_stream(rng, 300, experts, top_k, pad=0.15, skew=1.0)
    ids[::7, -1] = ids[::7, 0]  # repeated ids within a token count once
    for capacity in range(top_k, experts + 2):
        expected, _ = reference_lru(ids, capacity)
        for block in (1, 7, 64, None):  # block edges, including one token per block
            result = simulate_cache(ids, capacity, "lru", num_experts=experts, block_tokens=block)
            assert result.demand_misses == expected, (capacity, block)
            assert result.activations == sum(map(len, _token_sets(ids)))


def test_capacity_at_least_experts_gives_compulsory_misses_only():
    rng = np.random.default_rng(5)
    ids = random_stream(rng, 200, 6, 3, pad=0.1)
    used = len({int(e) for e in ids.ravel() if e >= 0})
    for policy in ("lru", "belady"):
        for capacity in (6, 9):
            assert simulate_cache(ids, capacity, policy, num_experts=6).demand_misses == used


# --- static LFU --------------------------------------------------------------------------------


def test_static_lfu_hand_counts():
    ids = np.array([[1, 3], [0, -1], [1, 2], [3, 0], [2, -1]], np.int16)
    result = simulate_cache(ids, 2, "lfu", num_experts=4, fit_load=np.array([1, 5, 3, 5]))
    # pinned {1, 3}: their first uses (2) + every use of 0 and 2 (4)
    assert (result.tokens, result.activations, result.demand_misses) == (5, 8, 6)
    # ties go to the lower id: pinned {0, 1}, misses = 0 and 1 first used (2) + 2, 3, 3, 2 (4)
    tied = simulate_cache(ids, 2, "lfu", num_experts=4, fit_load=np.array([5, 3, 3, 1]))
    assert tied.demand_misses == 6
    pinned_0_2 = simulate_cache(ids, 2, "lfu", num_experts=4, fit_load=np.array([5, 3, 4, 1]))
    assert pinned_0_2.demand_misses == 2 + 4  # 0 and 2 first used, then 1, 3, 1, 3


# --- co-activation prefetch --------------------------------------------------------------------


def clustered_stream(blocks):
    """Teams {0..3}, {4..7}, {8..11} in turn; each team fires pair A then pair B, twice."""
    rows = []
    for block in range(blocks):
        base = 4 * (block % 3)
        rows += [[base, base + 1], [base + 2, base + 3]] * 2
    coact = np.zeros((12, 12), np.int64)
    for team in range(3):
        members = slice(4 * team, 4 * team + 4)
        coact[members, members] = 10
    np.fill_diagonal(coact, 0)
    return np.array(rows, np.int16), coact


def test_coact_prefetch_on_clustered_teams_hand_counts():
    ids, coact = clustered_stream(6)
    pre = simulate_cache(ids, 4, "coact-prefetch", num_experts=12, coact=coact)
    lru = simulate_cache(ids, 4, "lru", num_experts=12)
    # per team block: the first pair misses (2) and prefetches its partners (2 loads); then all hits
    assert (pre.activations, pre.demand_misses, pre.prefetch_loads) == (48, 12, 12)
    assert lru.demand_misses == 24  # LRU misses both pairs of every block
    assert pre.demand_misses < lru.demand_misses
    assert pre.loads_per_activation == pytest.approx(24 / 48)
    assert reference_lru(ids, 4, coact, 2) == (12, 12)


def test_coact_prefetch_tiny_example_counts_only_new_experts():
    coact = np.array([[0, 5, 1, 0], [5, 0, 0, 0], [1, 0, 0, 2], [0, 0, 2, 0]], np.int64)
    ids = column([0, 1, 3, 0, -1, 2])
    result = simulate_cache(ids, 2, "coact-prefetch", num_experts=4, coact=coact, prefetch=1)
    # t0: 0 misses, prefetch 1 (load). t1: 1 hits, prefetch 0 (cached). t2: 3 misses -> {3, 1},
    # prefetch 2 (load) -> {2, 3}. t3: 0 misses -> {0, 2}, prefetch 1 (load) -> {1, 0}.
    # t4: nothing fired, nothing prefetched. t5: 2 misses, prefetch 3 (load). Misses at t0, t2, t3, t5.
    assert (result.demand_misses, result.prefetch_loads) == (4, 4)
    assert reference_lru(ids, 2, coact, 1) == (4, 4)
    none = simulate_cache(ids, 2, "coact-prefetch", num_experts=4, coact=coact, prefetch=0)
    assert none.demand_misses == simulate_cache(ids, 2, "lru", num_experts=4).demand_misses


@pytest.mark.parametrize("seed", range(3))
def test_vectorized_prefetch_equals_reference(seed):
    rng = np.random.default_rng(10 + seed)
    experts, top_k = 10, 2 + seed % 2
    fit = random_stream(rng, 200, experts, top_k, skew=1.2)
    coact, _ = coactivation_of(fit, experts)
    coact[0, 1] = coact[1, 0] = coact[0, 2] = coact[2, 0]  # a tie between experts 1 and 2
    ids = random_stream(rng, 250, experts, top_k, pad=0.1, skew=1.2)
    ids[::5] = -1  # tokens with no expert prefetch nothing
    for capacity in range(top_k, experts + 1, 2):
        for prefetch in (0, 1, top_k, capacity):
            expected = reference_lru(ids, capacity, coact, prefetch)
            for block in (3, None):
                result = simulate_cache(
                    ids,
                    capacity,
                    "coact-prefetch",
                    num_experts=experts,
                    coact=coact,
                    prefetch=prefetch,
                    block_tokens=block,
                )
                assert (result.demand_misses, result.prefetch_loads) == expected, (capacity, prefetch)


# --- Belady ------------------------------------------------------------------------------------


def test_belady_hand_example():
    # capacity 2, stream 0 1 2 0 1 2 0 1 2. Belady keeps the sooner-needed experts and drops 2 right
    # after each use: misses 0, 1, 2, then 2 at t5 and t8: 5. Without bypass (2 must stay, 1 goes
    # at t2): misses 0 1 2, 1 (t4), 0 (t6), 2 (t8): 6. LRU misses all 9.
    ids = column([0, 1, 2] * 3)
    assert simulate_cache(ids, 2, "belady", num_experts=3).demand_misses == 5
    assert _belady(_distinct(ids), 2, bypass=False) == (9, 6)
    assert simulate_cache(ids, 2, "lru", num_experts=3).demand_misses == 9


def test_belady_classic_example():
    # 0 1 2 0 1 3 0 1 at capacity 2: 2 and 3 are never reused, so Belady drops them: compulsory only.
    # Textbook (no bypass): 0 1 2 miss (1 evicted), 1 misses (2 evicted), 3 misses (1 evicted), 1: 6.
    ids = column([0, 1, 2, 0, 1, 3, 0, 1])
    assert simulate_cache(ids, 2, "belady", num_experts=4).demand_misses == 4
    assert _belady(_distinct(ids), 2, bypass=False) == (8, 6)
    assert simulate_cache(ids, 2, "lru", num_experts=4).demand_misses == 8


@pytest.mark.parametrize("seed", range(6))
def test_belady_is_the_optimum(seed):
    rng = np.random.default_rng(20 + seed)
    top_k = 1 + seed % 2
    ids = random_stream(rng, 11, 5, top_k, pad=0.1, skew=0.5)
    for capacity in range(top_k, 4):
        rows = _distinct(ids)
        assert _belady(rows, capacity)[1] == brute_force_optimum(ids, capacity, bypass=True)
        assert _belady(rows, capacity, bypass=False)[1] == brute_force_optimum(ids, capacity, bypass=False)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("top_k", [2, 3, 4])
def test_belady_bounds_every_policy(seed, top_k):
    rng = np.random.default_rng(100 * top_k + seed)
    experts = 12
    fit = random_stream(rng, 300, experts, top_k, skew=1.0)
    coact, fit_load = coactivation_of(fit, experts)
    ids = random_stream(rng, 400, experts, top_k, pad=0.05, skew=1.0)
    own_load = coactivation_of(ids, experts)[1]  # LFU pinned with hindsight: the strongest static choice
    for capacity in range(top_k, 2 * top_k + 1):
        results = simulate_policies(ids, capacity, num_experts=experts, fit_load=fit_load, coact=coact)
        opt = results["belady"].demand_misses
        assert {r.tokens for r in results.values()} == {400}
        assert opt <= results["lru"].demand_misses
        assert opt <= results["lfu"].demand_misses
        assert (
            opt <= simulate_cache(ids, capacity, "lfu", num_experts=experts, fit_load=own_load).demand_misses
        )
        pre = results["coact-prefetch"]
        assert opt <= pre.demand_misses + pre.prefetch_loads
        assert opt <= _belady(_distinct(ids), capacity, bypass=False)[1] <= results["lru"].demand_misses


def test_prefetch_can_hide_misses_below_belady():
    # Belady bounds the prefetcher's loads, not its demand misses alone
    ids, coact = clustered_stream(6)
    results = simulate_policies(ids, 4, num_experts=12, coact=coact, policies=("coact-prefetch", "belady"))
    pre, opt = results["coact-prefetch"], results["belady"]
    assert pre.demand_misses < opt.demand_misses <= pre.demand_misses + pre.prefetch_loads


# --- windows and errors ------------------------------------------------------------------------


def test_policies_share_the_belady_window():
    rng = np.random.default_rng(7)
    ids = random_stream(rng, 600, 8, 2)
    load = np.arange(8)[::-1]
    results = simulate_policies(
        ids, 3, num_experts=8, fit_load=load, coact=np.ones((8, 8), int), max_tokens=250
    )
    assert set(results) == set(POLICIES)
    for policy, result in results.items():
        assert result.tokens == 250
        alone = simulate_cache(ids[:250], 3, policy, num_experts=8, fit_load=load, coact=np.ones((8, 8), int))
        assert result == alone
    assert simulate_cache(ids, 3, "lru", num_experts=8).tokens == 600
    without = simulate_policies(ids, 3, num_experts=8, policies=("lru",))
    assert without["lru"].tokens == 600


def test_belady_defaults_to_a_bounded_window():
    ids = column(np.arange(DEFAULT_BELADY_TOKENS + 50) % 3)
    result = simulate_cache(ids, 2, "belady", num_experts=3)
    assert result.tokens == DEFAULT_BELADY_TOKENS
    assert simulate_policies(ids, 2, num_experts=3, policies=("lru", "belady"))["lru"].tokens == (
        DEFAULT_BELADY_TOKENS
    )


def test_capacity_below_top_k_raises():
    ids = np.array([[0, 1, 2]], np.int16)
    for policy in POLICIES:
        with pytest.raises(MoeplaceError, match="below top-k 3"):
            simulate_cache(ids, 2, policy, num_experts=4, fit_load=np.ones(4), coact=np.ones((4, 4), int))


def test_bad_inputs_raise():
    ids = np.array([[0, 1]], np.int16)
    with pytest.raises(MoeplaceError, match="fit_load"):
        simulate_cache(ids, 2, "lfu", num_experts=4)
    with pytest.raises(MoeplaceError, match="coact"):
        simulate_cache(ids, 2, "coact-prefetch", num_experts=4)
    with pytest.raises(MoeplaceError, match="prefetch"):
        simulate_cache(ids, 2, "coact-prefetch", num_experts=4, coact=np.ones((4, 4), int), prefetch=3)
    with pytest.raises(MoeplaceError, match="ids"):
        simulate_cache(np.array([[0, 4]]), 2, "lru", num_experts=4)
    with pytest.raises(MoeplaceError, match="policy"):
        simulate_cache(ids, 2, "fifo", num_experts=4)
    with pytest.raises(MoeplaceError, match="dims"):
        simulate_cache(np.zeros((2, 2, 2), int), 2, "lru", num_experts=4)


def test_empty_stream():
    result = simulate_cache(np.zeros((0, 2), np.int16), 2, "lru", num_experts=4)
    assert (result.tokens, result.activations, result.miss_rate) == (0, 0, 0.0)

"""The exact fan-out search: swap deltas, pair re-splits, local search, hypergraph, bounds."""

import itertools

import numpy as np
import pytest

from conftest import all_balanced_placements, make_trace
from moeplace.calibrate.stats import compute_statistics
from moeplace.errors import MoeplaceError
from moeplace.planner.agglomerate import agglomerate
from moeplace.planner.bounds import fanout_lower_bounds
from moeplace.planner.objective import fanout
from moeplace.planner.plan import solve_layer
from moeplace.planner.solvers import SOLVERS, SolverOptions, exact, exact_pairs
from moeplace.planner.solvers.caps import device_loads, load_caps
from moeplace.planner.solvers.refine import SwapSearch, local_search
from moeplace.planner.topology import Topology

OPTIONS = SolverOptions(load_tolerance=0.1, seed=0, time_limit=0.5, search_steps=200)


def small_real(real_trace, n, layer=5, k=3, docs=60):
    """A small instance from real routing: ids folded into n experts, duplicates dropped."""
    ids = np.asarray(real_trace.select_documents(np.arange(docs)).topk_ids[:, layer, :]) % n
    ids = np.sort(ids, axis=1)
    ids = np.where(
        np.concatenate([np.ones((ids.shape[0], 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1), ids, -1
    )
    trace = make_trace(ids[:, :k], [ids.shape[0]], n)
    return compute_statistics(trace, resamples=4).layer(0)


def test_swap_deltas_are_exact(real_stats):
    stats, topology = real_stats.layer(9), Topology(32, 4)
    search = SwapSearch.build(stats.topk_sets, topology, load_caps(stats, topology, 0.1))
    placement = np.random.default_rng(0).permutation(32) // 8
    delta = search.swap_deltas(placement)
    before = fanout(stats.topk_sets, placement)
    for a, b in [(0, 1), (3, 17), (5, 30), (12, 20), (8, 9)]:
        swapped = placement.copy()
        swapped[a], swapped[b] = swapped[b], swapped[a]
        expected = fanout(stats.topk_sets, swapped) - before if placement[a] != placement[b] else 0
        assert delta[a, b] == pytest.approx(expected) or placement[a] == placement[b]


def test_swap_deltas_kept_through_swaps_equal_a_fresh_count(real_stats):
    # The search updates the terms from the sets a swap touches; after many swaps (across and
    # within nodes) they must equal the terms counted from scratch, bit for bit.
    stats, topology = real_stats.layer(5), Topology(32, 8, num_nodes=2)
    search = SwapSearch.build(stats.topk_sets, topology, load_caps(stats, topology, 0.1), node_cost=1.0)
    placement = np.random.default_rng(1).permutation(32) // 4
    kept = search.track(placement)
    for a, b in np.random.default_rng(2).integers(0, 32, size=(60, 2)):
        placement[a], placement[b] = placement[b], placement[a]
        kept.swap(int(a), int(b))
    fresh = search.track(placement)
    for mine, theirs in ((kept.devices, fresh.devices), (kept.nodes, fresh.nodes)):
        np.testing.assert_array_equal(mine.group, theirs.group)
        for term in ("per_set", "leave", "join", "shared"):
            np.testing.assert_array_equal(getattr(mine, term), getattr(theirs, term))
    np.testing.assert_array_equal(kept.deltas(), search.swap_deltas(placement))


def test_pair_resplit_builds_no_cp_sat_model_once_the_budget_is_spent(real_trace, monkeypatch):
    stats, topology = small_real(real_trace, 12), Topology(12, 3)
    caps = load_caps(stats, topology, 0.5)
    monkeypatch.setattr(exact_pairs, "MAX_ENUMERATED_SIZE", 0)
    monkeypatch.setattr(exact_pairs, "_cp_sat", lambda *args: pytest.fail("CP-SAT model built"))
    assert exact_pairs.resplit_pair(stats.topk_sets, caps, np.arange(12) // 4, 0, 1, 0.0) == (None, 0.0)


@pytest.mark.parametrize("force_cp_sat", [False, True])
def test_pair_resplit_finds_the_best_split(real_trace, monkeypatch, force_cp_sat):
    stats, topology = small_real(real_trace, 12), Topology(12, 3)
    caps = load_caps(stats, topology, 0.5)
    start = np.arange(12) // 4
    if force_cp_sat:
        monkeypatch.setattr(exact_pairs, "MAX_ENUMERATED_SIZE", 0)
    better, _ = exact_pairs.resplit_pair(stats.topk_sets, caps, start, 0, 1, 5.0)
    candidates = []
    for first in itertools.combinations(range(8), 4):
        trial = start.copy()
        trial[:8] = 1
        trial[list(first)] = 0
        if (device_loads(trial, caps.scenario_load, 3).max(axis=1) <= caps.cap).all():
            candidates.append(fanout(stats.topk_sets, trial))
    best = min(candidates)
    if best < fanout(stats.topk_sets, start):
        assert better is not None and fanout(stats.topk_sets, better) == best
        assert np.array_equal(better[8:], start[8:])  # the third device is untouched
    else:
        assert better is None


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 4, 8])
def test_local_search_keeps_counts_and_caps_and_never_worsens(real_stats, devices):
    topology = Topology(32, devices)
    for layer in (0, 11, 23):
        stats = real_stats.layer(layer)
        caps = load_caps(stats, topology, 0.1)
        start = agglomerate(stats.coact, topology, caps.scenario_load, caps.cap)
        placement, report = local_search(stats, topology, caps, start, OPTIONS)
        np.testing.assert_array_equal(
            np.bincount(placement, minlength=devices), np.full(devices, 32 // devices)
        )
        assert (device_loads(placement, caps.scenario_load, devices).max(axis=1) <= caps.cap).all()
        assert report["cap_met"] and report["fanout"] == fanout(stats.topk_sets, placement)
        assert report["fanout"] <= report["fanout_tabu"] <= report["fanout_descent"] <= report["fanout_start"]
        assert report["fanout_start"] == fanout(stats.topk_sets, start)


def test_refine_repairs_an_uncapped_start(real_stats):
    stats, topology = real_stats.layer(12), Topology(32, 8)
    greedy = SOLVERS["greedy"].solve(stats, topology, OPTIONS).expert_to_device
    caps = load_caps(stats, topology, 0.1)
    assert (device_loads(greedy, caps.scenario_load, 8).max(axis=1) > caps.cap).any()
    refined = solve_layer(
        "greedy", stats, topology, SolverOptions(load_tolerance=0.1, search_steps=100, refine=True)
    )
    assert refined.info["refine"]["cap_met"]
    assert (device_loads(refined.expert_to_device, caps.scenario_load, 8).max(axis=1) <= caps.cap).all()


@pytest.mark.slow
def test_hypergraph_is_never_worse_than_its_greedy_start(real_stats):
    topology = Topology(32, 4)
    for layer in (2, 17):
        stats = real_stats.layer(layer)
        solution = SOLVERS["hypergraph"].solve(stats, topology, OPTIONS)
        starts = solution.info["fanout_of_starts"]
        assert solution.info["fanout"] <= min(starts.values()) <= starts["greedy-capped"]
        assert any(name.startswith("mt-kahypar") for name in starts)
        again = SOLVERS["hypergraph"].solve(stats, topology, OPTIONS)
        np.testing.assert_array_equal(solution.expert_to_device, again.expert_to_device)


@pytest.mark.parametrize(("n", "d"), [(8, 2), (8, 4), (9, 3)])
def test_every_bound_is_below_the_optimum(real_trace, n, d):
    stats, topology = small_real(real_trace, n, k=3), Topology(n, d)
    optimum = min(fanout(stats.topk_sets, p) for p in all_balanced_placements(n, d))
    ortools = solve_layer("ortools", stats, topology, SolverOptions(load_tolerance=10.0, time_limit=2.0))
    cp_sat = ortools.info["bound_colocated_coactivation"]
    bounds = fanout_lower_bounds(stats, topology, cp_sat)
    assert bounds["slots"] <= bounds["best"] <= optimum
    assert bounds["pairs"] <= optimum
    tokens = stats.topk_sets.counts.sum()
    assert ortools.info["lower_bound_dev_per_token"] * tokens <= optimum + 1e-9
    assert ortools.info["fit_dev_per_token"] * tokens >= optimum - 1e-6


@pytest.mark.slow
@pytest.mark.parametrize(("n", "d", "eps"), [(8, 2, 10.0), (8, 4, 0.2), (9, 3, 0.2), (12, 3, 0.3)])
def test_exact_finds_the_optimum_under_the_cap_and_proves_it(real_trace, n, d, eps):
    stats, topology = small_real(real_trace, n, k=3), Topology(n, d)
    caps = load_caps(stats, topology, eps)
    feasible = [
        p
        for p in all_balanced_placements(n, d)
        if (device_loads(p, caps.scenario_load, d).max(axis=1) <= caps.cap).all()
    ]
    optimum = min(fanout(stats.topk_sets, p) for p in feasible)
    solution = solve_layer("exact", stats, topology, SolverOptions(load_tolerance=eps, time_limit=10.0))
    placement = solution.expert_to_device
    assert solution.info["status"] == "OPTIMAL"
    assert fanout(stats.topk_sets, placement) == optimum == solution.info["fanout"]
    assert solution.info["bound_fanout"] == optimum  # proven, and the layer's best bound
    assert solution.info["lower_bound_dev_per_token"] == pytest.approx(optimum / stats.topk_sets.counts.sum())
    assert (device_loads(placement, caps.scenario_load, d).max(axis=1) <= caps.cap).all()
    assert solution.info["fanout"] <= solution.info["refine_fanout"]
    again = solve_layer("exact", stats, topology, SolverOptions(load_tolerance=eps, time_limit=10.0))
    np.testing.assert_array_equal(again.expert_to_device, placement)


def test_exact_refuses_a_layer_too_large_to_prove(real_stats, monkeypatch):
    monkeypatch.setattr(exact, "MAX_SET_DEVICES", 1000)
    with pytest.raises(MoeplaceError, match="too large to solve exactly"):
        SOLVERS["exact"].solve(real_stats.layer(0), Topology(32, 8), OPTIONS)

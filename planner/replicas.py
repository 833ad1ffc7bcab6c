"""Replicas placed with co-activation in mind, after any solver has placed one copy of each expert.

Which experts get the R extra slots is DeepSeek EPLB's rule (each slot to the expert with the
highest calibration load per replica), so the comparison with ``eplb`` isolates where replicas go.
Where: hottest first, each replica goes to the device (with a free extra slot, not yet holding
that expert) that minimizes the fit trace's fan-out under the dispatch policy (``dispatch``),
among the devices that keep every device's load within (1 + eps) x mean; if none does, to the one
with the lowest busiest device. A token then finds a replica on a device it already touches. If
the only free slots are on devices holding the expert already, the replica goes there (legal for
the engines, as in EPLB's packing, but it serves nothing) and the report counts it.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import maximum_bipartite_matching

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.dispatch import dispatch, replica_table
from moeplace.planner.objective import distinct_per_row, token_devices
from moeplace.planner.solvers.base import SolverOptions
from moeplace.planner.solvers.eplb import replicate_experts
from moeplace.planner.topology import Topology


def replica_counts(load: np.ndarray, topology: Topology) -> np.ndarray:
    """int64 ``[N]`` slots of each expert (1 + its replicas) by EPLB's rule."""
    return replicate_experts(load[None, :].astype(np.float32), topology.num_physical)[2][0]


def add_replicas(
    stats: LayerStats, topology: Topology, expert_to_device: np.ndarray, options: SolverOptions
) -> tuple[np.ndarray, dict]:
    """``physical_to_logical`` int64 ``[N + R]`` extending ``expert_to_device`` [N] with R replicas."""
    n, d, extra = topology.num_experts, topology.num_devices, topology.redundant_slots
    phy2log, _, _ = replicate_experts(stats.load[None, :].astype(np.float32), n + extra)
    hot = phy2log[0, n:]  # the replicated expert of each extra slot, hottest first
    table = np.full((n, 1 + int(np.bincount(hot, minlength=n).max(initial=0))), -1, np.int64)
    table[:, 0] = expert_to_device
    free = np.full(d, extra // d)
    wasted = 0
    sets, weight = stats.topk_sets.sets, stats.topk_sets.counts.astype(np.float64)
    cap = (1.0 + options.load_tolerance) * weight @ (sets >= 0).sum(axis=1) / d
    for position, expert in enumerate(hot):
        column = int(np.argmax(table[expert] < 0))
        best = None
        for device in np.flatnonzero((free > 0) & ~np.isin(np.arange(d), table[expert])):
            table[expert, column] = device
            free[device] -= 1
            fits = _room_for(hot[position + 1 :], table, free)
            free[device] += 1
            if not fits:
                continue
            cost, peak = _evaluate(sets, weight, table, topology, options.node_cost)
            key = (peak > cap, peak if peak > cap else cost)
            if best is None or key < best[0]:
                best = (key, device)
        if best is None:  # every free slot is on a device that holds it already: legal, wasted
            best = (None, int(np.argmax(free > 0)))
            wasted += 1
        table[expert, column] = best[1]
        free[best[1]] -= 1
    load = np.zeros(d)
    served = dispatch(sets, weight, _distinct(table), d, load)
    report = {
        "replicated_experts": np.unique(hot).tolist(),
        "replica_count": np.bincount(hot, minlength=n)[np.unique(hot)].tolist(),
        "fit_dev_per_token": float(weight @ distinct_per_row(served) / weight.sum()),
        "fit_max_mean_load": float(load.max() / load.mean()),
        "replicas_beside_their_expert": wasted,
    }
    return _slots(table, topology), report


def _room_for(experts: np.ndarray, table: np.ndarray, free: np.ndarray) -> bool:
    """Can replicas of ``experts`` still each take a free slot on a device without that expert?"""
    if not experts.size:
        return True
    slot_device = np.repeat(np.arange(free.shape[0]), free)
    allowed = (table[experts][:, :, None] != slot_device[None, None, :]).all(axis=1)  # [replicas, slots]
    matched = maximum_bipartite_matching(sparse.csr_matrix(allowed.astype(np.int8)), perm_type="column")
    return bool((matched >= 0).all())


def _distinct(table: np.ndarray) -> np.ndarray:
    """The dispatch table (``replica_table``) of ``table`` [N, C]: each expert's devices, -1 unused."""
    expert, column = np.nonzero(table >= 0)
    return replica_table(expert, table[expert, column], table.shape[0])


def _evaluate(sets, weight, table, topology, node_cost) -> tuple[float, float]:
    """Fit fan-out (+ node cost x node fan-out) and the busiest device's load under dispatch."""
    load = np.zeros(topology.num_devices)
    devices = dispatch(sets, weight, _distinct(table), topology.num_devices, load)
    cost = weight @ distinct_per_row(devices)
    if node_cost and topology.num_nodes > 1:
        cost += node_cost * (weight @ distinct_per_row(token_devices(devices, topology.node_of_device)))
    return float(cost), float(load.max())


def _slots(table: np.ndarray, topology: Topology) -> np.ndarray:
    """Physical slots device-major; within a device its experts in ascending id order."""
    expert, _ = np.nonzero(table >= 0)
    device = table[table >= 0]
    order = np.lexsort((expert, device))
    return expert[order].astype(np.int64)

"""``greedy``: co-activation agglomeration into equal-size groups, no load cap.

The agglomeration engine here also serves ``greedy-capped``. Start from one group per expert;
repeatedly merge the two groups with the highest average linkage (co-activation per expert pair
between them) whose merged size fits a device and whose merged load stays under every scenario
cap, provided the groups can still be packed onto the devices. The final groups, packed, are the
placement. Average rather than summed linkage, so large groups do not snowball by size alone.
The last packing found is kept: two groups on one device merge without repacking.
"""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.objective import colocated_weight
from moeplace.planner.solvers.base import Solution, SolverOptions
from moeplace.planner.topology import Topology


def agglomerate(
    coact: np.ndarray, topology: Topology, scenario_load: np.ndarray, cap: np.ndarray
) -> np.ndarray:
    """Device of each expert, int64 ``[N]``.

    Args:
        coact: int ``[N, N]`` pair co-activation counts, symmetric.
        topology: devices and slots.
        scenario_load: int ``[K, N]`` expert loads under K scenarios (K may be 0: no cap).
        cap: ``[K]`` largest device load allowed per scenario; the singletons must be packable.
    """
    n, slots = topology.num_experts, topology.slots_per_device
    group_of = np.arange(n)
    size = np.ones(n, np.int64)
    load = scenario_load.T.astype(np.float64).copy()  # [N, K], row g = group g's loads
    weight = coact.astype(np.float64).copy()
    np.fill_diagonal(weight, 0.0)
    alive = np.ones(n, bool)
    device = pack_groups(size, load, topology, cap)  # [N] device of each alive group
    assert device is not None, "the singletons must be packable under the caps"
    while True:
        ids = np.flatnonzero(alive)
        s, g_load = size[ids], load[ids]
        allowed = np.triu(s[:, None] + s[None, :] <= slots, 1)
        allowed &= (g_load[:, None, :] + g_load[None, :, :] <= cap).all(axis=-1)
        linkage = np.where(allowed, weight[np.ix_(ids, ids)] / np.outer(s, s), -np.inf)
        candidates = np.argsort(-linkage, axis=None, kind="stable")[: int(allowed.sum())]
        for flat in candidates:  # best first
            i, j = divmod(int(flat), ids.shape[0])
            a, b = ids[i], ids[j]
            if device[a] != device[b]:  # same device: the current packing stays valid
                keep = np.arange(ids.shape[0]) != j
                trial_size, trial_load = s.copy(), g_load.copy()
                trial_size[i] += s[j]
                trial_load[i] += g_load[j]
                repacked = pack_groups(trial_size[keep], trial_load[keep], topology, cap)
                if repacked is None:
                    continue
                device[ids[keep]] = repacked
            group_of[group_of == b] = a
            size[a] += size[b]
            load[a] += load[b]
            weight[a] += weight[b]
            weight[:, a] += weight[:, b]
            weight[a, a] = 0.0
            alive[b] = False
            break
        else:
            break
    return device[group_of]


def pack_groups(size: np.ndarray, load: np.ndarray, topology: Topology, cap: np.ndarray) -> np.ndarray | None:
    """Assign groups to devices so slots fit and every scenario load stays <= its cap, or None.

    Args:
        size: int ``[G]`` experts per group. load: ``[G, K]`` group loads. cap: ``[K]``.

    Greedy packing, tried in three orders; the first is frequency-balanced packing (largest
    first onto the least-loaded device by calibration load), so singletons that the ``frequency``
    placement fits always pack. The others spread groups by their load relative to the caps.
    Returns int64 ``[G]`` device per group.
    """
    num_groups, num_scenarios = load.shape
    relative = np.divide(load, cap, out=np.zeros_like(load), where=cap > 0)
    heaviest = relative.max(axis=1, initial=0.0)
    first = load[:, 0] if num_scenarios else np.zeros(num_groups)
    tiebreak = np.arange(num_groups)
    attempts = (
        (np.lexsort((tiebreak, -first, -size)), False),
        (np.lexsort((tiebreak, -heaviest, -size)), True),
        (np.lexsort((tiebreak, -size, -heaviest)), True),
    )
    for order, by_relative in attempts:
        device = _pack_in_order(order, size, load, topology, cap, by_relative)
        if device is not None:
            return device
    return None


def _pack_in_order(order, size, load, topology, cap, by_relative) -> np.ndarray | None:
    # Called thousands of times per layer by the agglomeration: per group, a handful of array
    # operations on [D, K] and only the chosen device's key updated.
    num_devices, num_scenarios = topology.num_devices, load.shape[1]
    free = np.full(num_devices, topology.slots_per_device, np.int64)
    headroom = np.broadcast_to(np.asarray(cap, np.float64), (num_devices, num_scenarios)).copy()
    cap = np.asarray(cap, np.float64)
    key = np.zeros(num_devices)
    device = np.empty(size.shape[0], np.int64)
    for g in order:  # one step per group (at most N), never per token
        fits = (free >= size[g]) & (load[g] <= headroom).all(axis=1)
        d = int(np.where(fits, key, np.inf).argmin())
        if not fits[d]:
            return None
        device[g] = d
        free[d] -= size[g]
        headroom[d] -= load[g]
        used = cap - headroom[d]  # device d's load in every scenario
        if by_relative:
            key[d] = np.divide(used, cap, out=np.zeros(num_scenarios), where=cap > 0).max(initial=0.0)
        elif num_scenarios:
            key[d] = used[0]
    return device


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    no_scenarios = np.zeros((0, topology.num_experts), np.int64)
    expert_to_device = agglomerate(stats.coact, topology, no_scenarios, np.zeros(0))
    return Solution(
        expert_to_device, {"colocated_coactivation": colocated_weight(stats.coact, expert_to_device)}
    )

"""Replicas placed with co-activation in mind, after any solver has placed one copy of each expert.

Which experts get the R extra slots is DeepSeek EPLB's rule (each slot to the expert with the
highest calibration load per replica), so the comparison with ``eplb`` isolates where replicas go.
Where: hottest first, each replica goes to the device (with a free extra slot, not yet holding
that expert) that minimizes the fit trace's fan-out under the dispatch policy (``dispatch``),
among the devices that keep every device's load within (1 + eps) x mean; if none does, to the one
with the lowest busiest device. A token then finds a replica on a device it already touches.
At scale the exact dispatch for every candidate is too slow (256 experts, 32 devices and 262k
sets a layer: two minutes a layer), so two shortcuts apply. Beyond ``EXACT_SETS`` distinct top-k
sets, candidates are dispatched on a fixed keyed sample of that many (``TopkSets.sampled``).
Beyond ``EXACT_DEVICES`` candidate devices, only a shortlist is dispatched: the ``SHORTLIST`` with
the largest estimated saving (tokens holding the expert whose other experts already touch the
device, while the expert's current device serves that expert alone) and the ``SHORTLIST`` least
loaded. Below both (the shared traces at D <= 8) every candidate is dispatched on every set.
No device ever holds two copies of one expert (``moeplace.planner.slots``): an expert gets at most
one copy per device, a replica goes only where the replicas still to come can go too, and when the
devices left with free slots already hold the next replica's expert, that slot goes to the next
expert in EPLB's order instead.
"""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats, TopkSets
from moeplace.planner.dispatch import dispatch, replica_table
from moeplace.planner.objective import distinct_per_row, token_devices
from moeplace.planner.slots import copies_fit
from moeplace.planner.solvers.base import SolverOptions
from moeplace.planner.solvers.eplb import replicate_experts
from moeplace.planner.topology import Topology

EXACT_DEVICES = 8  # candidate devices a replica is dispatched exactly to, all of them, up to this many
EXACT_SETS = 1 << 15  # distinct top-k sets the exact dispatch runs on (a fixed sample beyond)
SHORTLIST = 2  # beyond EXACT_DEVICES: candidates by estimated saving, and as many by lowest load


def replica_counts(load: np.ndarray, topology: Topology) -> np.ndarray:
    """int64 ``[N]`` slots of each expert (1 + its replicas) by EPLB's rule, one copy per device at most."""
    load = load[None, :].astype(np.float32)
    return replicate_experts(load, topology.num_physical, topology.num_devices)[2][0]


def add_replicas(
    stats: LayerStats, topology: Topology, expert_to_device: np.ndarray, options: SolverOptions
) -> tuple[np.ndarray, dict]:
    """``physical_to_logical`` int64 ``[N + R]`` extending ``expert_to_device`` [N] with R replicas."""
    n, d, extra = topology.num_experts, topology.num_devices, topology.redundant_slots
    hot = _placeable_replicas(stats.load, expert_to_device, topology)  # hottest first
    table = np.full((n, 1 + int(np.bincount(hot, minlength=n).max(initial=0))), -1, np.int64)
    table[:, 0] = expert_to_device
    free = np.full(d, extra // d)
    sets, weight = _evaluation_sets(stats.topk_sets, n)
    cap = (1.0 + options.load_tolerance) * weight @ (sets >= 0).sum(axis=1) / d
    current = None  # the dispatch of sets by the table as it stands: (served, load)
    for position, expert in enumerate(hot):
        column = int(np.argmax(table[expert] < 0))
        later = np.bincount(hot[position + 1 :], minlength=n)
        best = None
        candidates = np.flatnonzero((free > 0) & ~np.isin(np.arange(d), table[expert]))
        if candidates.shape[0] > EXACT_DEVICES:
            if current is None:
                current = _dispatched(sets, weight, table, d)
            candidates = _shortlist(sets, weight, *current, expert, candidates)
        for device in candidates:
            table[expert, column] = device
            free[device] -= 1
            fits = copies_fit(later, _holds(table, d), free)
            free[device] += 1
            if not fits:
                continue
            outcome = _dispatched(sets, weight, table, d)
            cost, peak = _evaluate(weight, *outcome, topology, options.node_cost)
            key = (peak > cap, peak if peak > cap else cost)
            if best is None or key < best[0]:
                best = (key, device, outcome)
        assert best is not None, "_placeable_replicas admitted a replica with no device"
        table[expert, column] = best[1]
        free[best[1]] -= 1
        current = best[2]  # the next replica's shortlist starts from this dispatch
    load = np.zeros(d)
    sets, weight = stats.topk_sets.sets, stats.topk_sets.counts.astype(np.float64)
    served = dispatch(sets, weight, _distinct(table), d, load)
    report = {
        "replicated_experts": np.unique(hot).tolist(),
        "replica_count": np.bincount(hot, minlength=n)[np.unique(hot)].tolist(),
        "fit_dev_per_token": float(weight @ distinct_per_row(served) / weight.sum()),
        "fit_max_mean_load": float(load.max() / load.mean()),
    }
    return _slots(table, topology), report


def _evaluation_sets(topk_sets: TopkSets, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """The sets ``[H', k]`` and weights ``[H']`` candidate replicas are dispatched on: all of them,
    or beyond ``EXACT_SETS`` a fixed keyed sample. The weights are the sets' token counts, not
    scaled by 1 / rate: candidates are compared with each other and with a cap computed from the
    same weights, so a common scale changes nothing, and whole numbers keep every sum exact."""
    rate = min(1.0, EXACT_SETS / max(topk_sets.sets.shape[0], 1))
    sample = topk_sets.sampled(rate, num_experts, seed=1)  # seed 1: independent of the statistics' own
    return sample.sets, sample.counts.astype(np.float64)


def _shortlist(
    sets: np.ndarray,
    weight: np.ndarray,
    served: np.ndarray,
    load: np.ndarray,
    expert: int,
    candidates: np.ndarray,
) -> np.ndarray:
    """The ``SHORTLIST`` candidates with the largest estimated saving and the ``SHORTLIST`` least
    loaded (ascending, distinct), under the current dispatch of ``sets`` [H, k]: devices
    ``served`` [H, k] and device load ``load`` [D] (``_dispatched``)."""
    rows = np.flatnonzero((sets == expert).any(axis=1))
    mine = sets[rows] == expert  # [n, k]
    own = served[rows][mine]  # [n] the device now serving the expert
    others = np.where(mine, -1, served[rows])  # the devices the token's other experts use
    alone = ~(others == own[:, None]).any(axis=1)
    touches = (others[:, :, None] == candidates[None, None, :]).any(axis=1)  # [n, C]
    saving = (weight[rows, None] * (touches & alone[:, None])).sum(axis=0)
    by_saving = candidates[np.argsort(-saving, kind="stable")[:SHORTLIST]]
    by_load = candidates[np.argsort(load[candidates], kind="stable")[:SHORTLIST]]
    return np.union1d(by_saving, by_load)


def _placeable_replicas(load: np.ndarray, expert_to_device: np.ndarray, topology: Topology) -> np.ndarray:
    """int64 ``[R]``: the expert of each extra slot by EPLB's rule (highest load per copy first,
    float32 like ``replicate_experts``), skipping a replica that could no longer go to a device
    without its expert while the others still fit. ``load``, ``expert_to_device``: ``[N]``."""
    n, d = topology.num_experts, topology.num_devices
    holds = np.zeros((d, n), bool)
    holds[expert_to_device, np.arange(n)] = True
    room = np.full(d, topology.redundant_slots // d)
    count, extra, order = np.ones(n, np.int64), np.zeros(n, np.int64), []
    load = load.astype(np.float32)
    for _ in range(topology.redundant_slots):
        share = np.where(count < d, load / count.astype(np.float32), -np.inf)
        for expert in np.argsort(-share, kind="stable")[: np.count_nonzero(count < d)]:
            extra[expert] += 1
            if copies_fit(extra, holds, room):
                break
            extra[expert] -= 1
        else:
            raise AssertionError("no replica fits: fewer free slots than the topology promised")
        count[expert] += 1
        order.append(expert)
    return np.array(order, np.int64)


def _holds(table: np.ndarray, num_devices: int) -> np.ndarray:
    """bool ``[D, N]``: device holds expert, from ``table`` ``[N, C]`` (devices, -1 unused)."""
    holds = np.zeros((num_devices, table.shape[0]), bool)
    expert, column = np.nonzero(table >= 0)
    holds[table[expert, column], expert] = True
    return holds


def _distinct(table: np.ndarray) -> np.ndarray:
    """The dispatch table (``replica_table``) of ``table`` [N, C]: each expert's devices, -1 unused."""
    expert, column = np.nonzero(table >= 0)
    return replica_table(expert, table[expert, column], table.shape[0])


def _dispatched(sets, weight, table, num_devices) -> tuple[np.ndarray, np.ndarray]:
    """The dispatch of ``sets`` [H, k] weighing ``weight`` [H] by ``table`` [N, C]: the device of
    each (set, expert) ``[H, k]`` and each device's load ``[D]``."""
    load = np.zeros(num_devices)
    return dispatch(sets, weight, _distinct(table), num_devices, load), load


def _evaluate(weight, served, load, topology, node_cost) -> tuple[float, float]:
    """Fit fan-out (+ node cost x node fan-out) and the busiest device's load of a dispatch."""
    cost = weight @ distinct_per_row(served)
    if node_cost and topology.num_nodes > 1:
        cost += node_cost * (weight @ distinct_per_row(token_devices(served, topology.node_of_device)))
    return float(cost), float(load.max())


def _slots(table: np.ndarray, topology: Topology) -> np.ndarray:
    """Physical slots device-major; within a device its experts in ascending id order."""
    expert, _ = np.nonzero(table >= 0)
    device = table[table >= 0]
    order = np.lexsort((expert, device))
    return expert[order].astype(np.int64)

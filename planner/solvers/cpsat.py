"""``ortools``: CP-SAT balanced partition maximizing co-located co-activation.

Full model, per layer: x[e, d] = expert e on device d; every expert on one device, every device
``slots`` experts; every device's load <= its cap in every load scenario (``moeplace.planner.solvers.caps``);
y[i, j] <= [i and j share a device] for each co-firing pair; maximize sum coact[i, j] * y[i, j].
Two valid cuts tighten its bound: an expert has at most ``slots - 1`` partners, and devices are
interchangeable, so expert e may only use devices 0..e (devices numbered by their lowest expert).

Search: the full model, hinted with the ``greedy-capped`` expert_to_device, gives the status and a proven
upper bound. Then devices are repaired two at a time: the experts of a device pair are split
between the two again by an exact CP-SAT bisection under the same caps, keeping any improvement,
pair after pair until a whole round improves nothing or the time is spent. Every CP-SAT call runs
one worker under a deterministic time limit, so the same input gives the same expert_to_device, and the
whole layer stays within ``time_limit`` deterministic seconds (plus at most one small repair).
"""

from __future__ import annotations

import itertools

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.agglomerate import agglomerate
from moeplace.planner.objective import colocated_weight
from moeplace.planner.solvers.base import Solution, SolverOptions, SolverSpec
from moeplace.planner.solvers.caps import LoadCaps, load_caps
from moeplace.planner.solvers.sat import canonical_devices, even_split, new_model, run
from moeplace.planner.topology import Topology

_FULL_MODEL_SHARE = 0.1  # of the time limit, for status and bound (the root LP); the rest repairs


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    caps = load_caps(stats, topology, options.load_tolerance)
    hint = canonical_devices(agglomerate(stats.coact, topology, caps.scenario_load, caps.cap))
    full_budget = options.time_limit * _FULL_MODEL_SHARE
    status, expert_to_device, bound, used = solve_full(
        stats.coact, topology, caps, hint, full_budget, options.seed
    )
    rounds = 0
    if status != "OPTIMAL" and topology.num_devices > 1:
        expert_to_device, spent, rounds = repair_pairs(
            stats.coact, topology, caps, expert_to_device, options.time_limit - used
        )
        used += spent
    objective = colocated_weight(
        stats.coact, expert_to_device
    )  # repairs keep the model's constraints: <= bound
    return Solution(
        expert_to_device,
        caps.info()
        | {
            "status": status,
            "colocated_coactivation": objective,
            "hint_colocated_coactivation": colocated_weight(stats.coact, hint),
            "gap": round(1.0 - objective / bound, 6) if bound else 0.0,
            "repair_rounds": rounds,
            "deterministic_time": round(used, 3),
        },
        bound_colocated_coactivation=bound,
    )


def solve_full(coact, topology: Topology, caps: LoadCaps, hint, time_limit: float, seed: int):
    """The full model. Returns (status name, expert_to_device [N], proven bound, deterministic time)."""
    n, num_devices, slots = topology.num_experts, topology.num_devices, topology.slots_per_device
    model = new_model()
    x = [[model.new_bool_var(f"x{e}_{d}") for d in range(min(e + 1, num_devices))] for e in range(n)]
    for e in range(n):
        model.add_exactly_one(x[e])
    for d in range(num_devices):
        on_d = [(e, x[e][d]) for e in range(d, n)]
        model.add(sum(v for _, v in on_d) == slots)
        for scenario, cap in zip(caps.scenario_load, caps.cap, strict=True):
            model.add(sum(int(scenario[e]) * v for e, v in on_d) <= int(cap))
    terms, partners = [], [[] for _ in range(n)]
    for i, j in zip(*np.nonzero(np.triu(coact, 1)), strict=True):  # i < j
        y = model.new_bool_var(f"y{i}_{j}")
        for d in range(len(x[i])):  # i's device is one of these; j must share it
            model.add(y <= 1 - x[i][d] + x[j][d])
        terms.append(int(coact[i, j]) * y)
        partners[i].append(y)
        partners[j].append(y)
        model.add_hint(y, bool(hint[i] == hint[j]))
    for e in range(n):
        if len(partners[e]) > slots - 1:
            model.add(sum(partners[e]) <= slots - 1)
        for d, v in enumerate(x[e]):
            model.add_hint(v, bool(hint[e] == d))
    model.maximize(sum(terms))
    status, found, solver = run(model, time_limit, seed)
    if found:
        expert_to_device = np.array(
            [next(d for d, v in enumerate(x[e]) if solver.value(v)) for e in range(n)]
        )
        bound = int(solver.best_objective_bound)
    else:  # UNKNOWN within the limit: keep the feasible hint, claim no bound beyond the trivial one
        expert_to_device, bound = hint, int(np.triu(coact, 1).sum())
    return status, expert_to_device.astype(np.int64), bound, solver.deterministic_time


def repair_pairs(coact, topology: Topology, caps: LoadCaps, expert_to_device, budget: float):
    """Re-split device pairs exactly while it helps. Returns (expert_to_device, deterministic time, rounds).

    A pair is re-split only if one of its devices changed since the pair was last solved: an
    unchanged pair's best split is the one it already has.
    """
    expert_to_device, spent, rounds = expert_to_device.copy(), 0.0, 0
    pairs = list(itertools.combinations(range(topology.num_devices), 2))
    version = np.zeros(topology.num_devices, np.int64)  # bumped when a device's experts change
    solved_at = {}  # pair -> the device versions it was last solved at
    while spent < budget:
        todo = [p for p in pairs if solved_at.get(p) != (version[p[0]], version[p[1]])]
        if not todo:
            break
        rounds += 1
        for a, b in todo:
            if spent >= budget:
                break
            experts = np.flatnonzero((expert_to_device == a) | (expert_to_device == b))
            on_a, used = bisect(
                coact[np.ix_(experts, experts)],
                caps.scenario_load[:, experts],
                caps.cap,
                expert_to_device[experts] == a,
                budget - spent,
            )
            spent += used
            if on_a is not None:
                expert_to_device[experts] = np.where(on_a, a, b)
                version[[a, b]] += 1
            solved_at[a, b] = (version[a], version[b])
    return expert_to_device, spent, rounds


def bisect(coact, scenario_load, cap, on_a, time_limit: float):
    """Best split of 2S experts into two devices of S under the caps, if strictly better than ``on_a``.

    ``coact`` ``[2S, 2S]``, ``scenario_load`` ``[K, 2S]``, ``on_a`` bool ``[2S]`` (current split).
    Returns (bool ``[2S]`` or None, deterministic time used).
    """
    m = on_a.shape[0]
    model, x = even_split(scenario_load, cap, "a")
    terms = []
    for i, j in zip(*np.nonzero(np.triu(coact, 1)), strict=True):
        y = model.new_bool_var(f"y{i}_{j}")
        model.add(y <= 1 - x[i] + x[j])
        model.add(y <= 1 + x[i] - x[j])
        terms.append(int(coact[i, j]) * y)
    current = on_a == on_a[0]
    now = int(np.triu(np.where(current[:, None] == current[None, :], coact, 0), 1).sum())
    model.add(sum(terms) >= now + 1)  # only strict improvements
    model.maximize(sum(terms))
    for e in range(m):
        model.add_hint(x[e], bool(current[e]))
    # tiny model: the LP costs more than it prunes
    _, found, solver = run(model, time_limit, 0, linearization_level=0)
    if not found:
        return None, solver.deterministic_time
    side = np.array([bool(solver.value(v)) for v in x])
    return (side if on_a[0] else ~side), solver.deterministic_time


SPEC = SolverSpec(solve, "CP-SAT maximizing co-located co-activation under the load cap")

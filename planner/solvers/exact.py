"""``exact``: CP-SAT on the exact fan-out, for layers small enough to prove optimal.

Each distinct top-k set h (tokens w_h) is one hyperedge. Variables: x[e, d] (expert e on device
d) and y[h, d] (set h touches device d). Minimize sum_h w_h sum_d y[h, d] subject to: one device
per expert, S experts per device, every device's load under its cap in every load scenario,
y[h, d] >= x[e, d] for each e in h, and the valid cut sum_d y[h, d] >= ceil(|h| / S). Sets of one
expert cost one device wherever it goes and are left out. Devices are interchangeable, so expert
i may only sit on devices 0..i (symmetry breaking).

The model is hinted with the ``refine`` expert_to_device (greedy-capped, then the exact local search), so
the answer is never worse than refine's, and CP-SAT's proven lower bound on the fan-out goes into
the layer's bounds. One worker under a deterministic time limit: reproducible. Tractable for a
dozen or two experts and a few hundred distinct sets; larger layers are refused with the reason.
"""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.errors import MoeplaceError
from moeplace.planner.objective import fanout
from moeplace.planner.solvers.base import Solution, SolverOptions, SolverSpec
from moeplace.planner.solvers.caps import LoadCaps, load_caps
from moeplace.planner.solvers.refine import solve as refine_solve
from moeplace.planner.solvers.sat import canonical_devices, new_model, run
from moeplace.planner.topology import Topology

# Distinct sets x devices. On a real layer (4,827 sets, 32 experts, D = 4) CP-SAT proved nothing
# in 5 deterministic seconds: its bound stayed below the trivial ceil(k / slots). Refuse such layers.
MAX_SET_DEVICES = 4_000


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    sets = stats.topk_sets
    size = (sets.sets >= 0).sum(axis=1)
    multi = np.flatnonzero(size >= 2)
    if multi.shape[0] * topology.num_devices > MAX_SET_DEVICES:
        raise MoeplaceError(
            f"exact: {multi.shape[0]} distinct top-k sets x {topology.num_devices} devices is too large "
            f"to solve exactly (limit {MAX_SET_DEVICES}); use refine or hypergraph"
        )
    if options.node_cost and topology.num_nodes > 1:
        raise MoeplaceError("exact does not model nodes; use refine or hypergraph with a node cost")
    caps = load_caps(stats, topology, options.load_tolerance)
    hint = refine_solve(stats, topology, options)
    status, expert_to_device, bound, used = _solve_model(
        sets.sets[multi], sets.counts[multi], topology, caps, hint.expert_to_device, options
    )
    if fanout(sets, expert_to_device) > hint.fanout:  # CP-SAT need not return its hint; keep the better
        expert_to_device = hint.expert_to_device
    constant = int(sets.counts[size == 1].sum())  # single-expert sets: one device each, always
    return Solution(
        expert_to_device,
        hint.info
        | {
            "status": status,
            "refine_fanout": hint.fanout,
            "deterministic_time": round(used, 3),
        },
        fanout=fanout(sets, expert_to_device),
        bound_fanout=None if bound is None else bound + constant,
    )


def _solve_model(
    members: np.ndarray,
    weights: np.ndarray,
    topology: Topology,
    caps: LoadCaps,
    hint: np.ndarray,
    options: SolverOptions,
) -> tuple[str, np.ndarray, int | None, float]:
    """CP-SAT over sets ``members`` int ``[H, k]`` (-1 padded) with tokens ``weights`` ``[H]``.

    Returns (status name, expert_to_device int64 ``[N]``, proven lower bound on these sets' total
    fan-out, deterministic seconds used). Without a solution in time, the hint and no bound.
    """
    n, num_devices, slots = topology.num_experts, topology.num_devices, topology.slots_per_device
    model = new_model()
    x = [[model.new_bool_var(f"x{e}_{d}") if d <= e else None for d in range(num_devices)] for e in range(n)]
    on = [[v for v in row if v is not None] for row in x]
    for row in on:
        model.add_exactly_one(row)
    for d in range(num_devices):
        column = [x[e][d] for e in range(d, n)]
        model.add(sum(column) == slots)
        for scenario, limit in zip(caps.scenario_load, caps.cap, strict=True):
            model.add(sum(int(scenario[e]) * x[e][d] for e in range(d, n)) <= int(limit))
    terms = []
    for row, weight in zip(members.tolist(), weights.tolist(), strict=True):
        experts = [e for e in row if e >= 0]
        touches = [model.new_bool_var("") for _ in range(num_devices)]
        for e in experts:
            for d, var in enumerate(x[e]):
                if var is not None:
                    model.add_implication(var, touches[d])
        model.add(sum(touches) >= -(-len(experts) // slots))
        terms.append(int(weight) * sum(touches))
    model.minimize(sum(terms))
    relabel = canonical_devices(hint)
    for e in range(n):
        for d, var in enumerate(x[e]):
            if var is not None:
                model.add_hint(var, relabel[e] == d)
    status, found, solver = run(model, options.time_limit, options.seed)
    if not found:  # no bound beyond the planner's own
        return status, hint.astype(np.int64), None, solver.deterministic_time
    expert_to_device = np.array(
        [next(d for d, v in enumerate(x[e]) if v is not None and solver.value(v)) for e in range(n)]
    )
    return (
        status,
        expert_to_device.astype(np.int64),
        int(np.ceil(solver.best_objective_bound - 1e-6)),
        solver.deterministic_time,
    )


SPEC = SolverSpec(
    solve,
    "CP-SAT on the exact fan-out, for small layers",
    needs_sets=True,
    refines=True,
    compared_by_default=False,
)

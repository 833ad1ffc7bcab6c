"""``hypergraph``: Mt-KaHyPar on the exact objective, then the exact local search under the cap.

Each distinct top-k set is a hyperedge weighted by its tokens; Mt-KaHyPar's connectivity-minus-one
(km1) objective is then exactly the total fan-out minus the tokens. It balances one node weight
only, so it partitions into equal expert counts (node weight 1, no imbalance) and knows nothing of
load: each partition is swap-repaired to the load caps. Several seeds (deterministic preset, one
thread) and the ``greedy-capped`` expert_to_device are tried as starts; the best, after descent, goes
through the full exact local search of ``refine``.
"""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats, TopkSets
from moeplace.planner.agglomerate import agglomerate
from moeplace.planner.solvers.base import Solution, SolverOptions, SolverSpec
from moeplace.planner.solvers.caps import load_caps
from moeplace.planner.solvers.refine import MAX_STEPS_PER_EXPERT, SwapSearch, local_search
from moeplace.planner.topology import Topology

SEEDS = 4
_initializer = None  # Mt-KaHyPar's thread pool, once per process


def partition(topk_sets: TopkSets, topology: Topology, seed: int) -> np.ndarray | None:
    """Mt-KaHyPar km1 partition into equal expert counts, int64 ``[N]``; None if unbalanced."""
    import mtkahypar  # imported here: only this solver needs it

    global _initializer
    if _initializer is None:
        _initializer = mtkahypar.initialize(1, False)
    context = _initializer.context_from_preset(mtkahypar.PresetType.DETERMINISTIC)
    context.logging = False
    context.set_partitioning_parameters(topology.num_devices, 0.0, mtkahypar.Objective.KM1)
    mtkahypar.set_seed(seed)
    edges = [[int(e) for e in row if e >= 0] for row in topk_sets.sets]
    keep = [i for i, edge in enumerate(edges) if len(edge) > 1]  # single experts never cost a cut
    hypergraph = _initializer.create_hypergraph(
        context,
        topology.num_experts,
        len(keep),
        [edges[i] for i in keep],
        [1] * topology.num_experts,
        [int(topk_sets.counts[i]) for i in keep],
    )
    expert_to_device = np.asarray(hypergraph.partition(context).get_partition(), dtype=np.int64)
    counts = np.bincount(expert_to_device, minlength=topology.num_devices)
    return expert_to_device if np.all(counts == topology.slots_per_device) else None


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    caps = load_caps(stats, topology, options.load_tolerance)
    search = SwapSearch.build(stats.topk_sets, topology, caps, options.node_cost)
    starts = {"greedy-capped": agglomerate(stats.coact, topology, caps.scenario_load, caps.cap)}
    if topology.num_devices > 1:
        for i in range(SEEDS):
            expert_to_device = partition(stats.topk_sets, topology, options.seed * SEEDS + i)
            if expert_to_device is not None:
                starts[f"mt-kahypar seed {options.seed * SEEDS + i}"] = expert_to_device
    descended = {}
    for name, start in starts.items():
        expert_to_device, _, feasible = search.run(start, MAX_STEPS_PER_EXPERT * topology.num_experts)
        if feasible:
            descended[name] = (search.cost(expert_to_device), expert_to_device)
    best = min(descended, key=lambda name: descended[name][0])  # greedy-capped is always feasible
    expert_to_device, report = local_search(stats, topology, caps, descended[best][1], options)
    return Solution(
        expert_to_device,
        caps.info()
        | report
        | {
            "start": best,
            "fanout_of_starts": {name: value for name, (value, _) in descended.items()},
        },
        fanout=report["fanout"],
    )


SPEC = SolverSpec(
    solve,
    "Mt-KaHyPar partitions of the top-k sets, then the exact local search",
    needs_sets=True,
    refines=True,
)

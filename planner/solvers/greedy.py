"""``greedy``: co-activation agglomeration into equal-size groups, no load cap (the engine:
``moeplace.planner.agglomerate``)."""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.agglomerate import agglomerate
from moeplace.planner.objective import colocated_weight
from moeplace.planner.solvers.base import Solution, SolverOptions, SolverSpec
from moeplace.planner.topology import Topology


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    no_scenarios = np.zeros((0, topology.num_experts), np.int64)
    expert_to_device = agglomerate(stats.coact, topology, no_scenarios, np.zeros(0))
    return Solution(
        expert_to_device, {"colocated_coactivation": colocated_weight(stats.coact, expert_to_device)}
    )


SPEC = SolverSpec(solve, "agglomerates co-firing experts into devices, ignoring load", capped=False)

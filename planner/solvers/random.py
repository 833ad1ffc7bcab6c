"""``random``: a seeded uniformly random placement with equal expert counts per device."""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.solvers.base import Solution, SolverOptions, SolverSpec
from moeplace.planner.topology import Topology


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    order = np.random.default_rng(options.seed).permutation(topology.num_experts)
    expert_to_device = np.empty(topology.num_experts, np.int64)
    expert_to_device[order] = np.arange(topology.num_experts) // topology.slots_per_device
    return Solution(expert_to_device)


SPEC = SolverSpec(
    solve, "a seeded random balanced placement (a floor)", uses_coactivation=False, capped=False
)

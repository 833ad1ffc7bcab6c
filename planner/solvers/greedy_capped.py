"""``greedy-capped``: the ``greedy`` agglomeration, but no merge may push a group past the load cap.

The cap is (1 + eps) x mean device load on the calibration trace and on each of its bootstrap
resamples (see ``moeplace.planner.solvers.caps``); groups must also stay packable under it, so the
placement meets the cap on every device.
"""

from __future__ import annotations

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.agglomerate import agglomerate
from moeplace.planner.objective import colocated_weight
from moeplace.planner.solvers.base import Solution, SolverOptions, SolverSpec
from moeplace.planner.solvers.caps import load_caps
from moeplace.planner.topology import Topology


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    caps = load_caps(stats, topology, options.load_tolerance)
    expert_to_device = agglomerate(stats.coact, topology, caps.scenario_load, caps.cap)
    return Solution(
        expert_to_device,
        caps.info()
        | {
            "colocated_coactivation": colocated_weight(stats.coact, expert_to_device),
        },
    )


SPEC = SolverSpec(solve, "greedy agglomeration under the load cap")

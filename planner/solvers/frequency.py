"""``frequency``: the frequency-balanced baseline (DeepSeek EPLB's balanced packing, no replicas).

Experts by calibration load, heaviest first, each onto the least-loaded device with a free slot.
"""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.solvers.base import Solution, SolverOptions, SolverSpec
from moeplace.planner.topology import Topology


def frequency_placement(load: np.ndarray, topology: Topology) -> np.ndarray:
    """Device of each expert, int64 ``[N]``, from expert load ``[N]``; ties go to lower ids."""
    slots = topology.slots_per_device
    device_load = np.zeros(topology.num_devices)
    used = np.zeros(topology.num_devices, np.int64)
    expert_to_device = np.empty(topology.num_experts, np.int64)
    for expert in np.lexsort((np.arange(load.shape[0]), -load)):  # N iterations, not tokens
        device = int(np.argmin(np.where(used < slots, device_load, np.inf)))
        expert_to_device[expert] = device
        device_load[device] += load[expert]
        used[device] += 1
    return expert_to_device


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    return Solution(frequency_placement(stats.load, topology))


SPEC = SolverSpec(
    solve,
    "the baseline: experts dealt heaviest first to the least-loaded device",
    uses_coactivation=False,
    capped=False,
)

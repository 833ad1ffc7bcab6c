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
    return heaviest_first(load, topology.num_devices)[0]


def heaviest_first(
    weight: np.ndarray, num_packs: int, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Pack items of ``weight`` ``[n]`` into ``num_packs`` packs of n / num_packs: heaviest first
    (equal weights: lower index first), each to the lightest pack with room (ties: lower pack),
    pack weights summed in ``dtype`` (EPLB sums in float32). Returns int64 ``pack`` and
    ``rank_in_pack``, both ``[n]``. The rule of DeepSeek EPLB's balanced packing."""
    per_pack = weight.shape[0] // num_packs
    pack_weight, items = np.zeros(num_packs, dtype), np.zeros(num_packs, np.int64)
    pack, rank_in_pack = np.empty(weight.shape[0], np.int64), np.empty(weight.shape[0], np.int64)
    for item in np.argsort(-weight, kind="stable"):  # n iterations, not tokens
        chosen = int(np.argmin(np.where(items < per_pack, pack_weight, np.inf)))
        pack[item], rank_in_pack[item] = chosen, items[chosen]
        pack_weight[chosen] += weight[item]
        items[chosen] += 1
    return pack, rank_in_pack


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    return Solution(frequency_placement(stats.load, topology))


SPEC = SolverSpec(
    solve,
    "the baseline: experts dealt heaviest first to the least-loaded device",
    uses_coactivation=False,
    capped=False,
)

"""``robust``: load only, replicas and their devices chosen to hold across workloads.

For engines' load records (SGLang's ``logical_count``, TensorRT-LLM's expert statistics): each
workload of the statistics (``moeplace import sglang-load``: one a file) is a scenario, and the
layer's placement minimizes the weighted mean over workloads of the busiest device's load
(``moeplace.planner.workloads``). Replica counts by the mean plus two standard deviations of each
copy's share across workloads; copies to devices by a greedy packing and a swap search on that
objective. With one workload (a trace, or one record) it balances that one, like EPLB. A replicated
expert's load is taken to split evenly over its copies.
"""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.solvers.base import Solution, SolverOptions, SolverSpec
from moeplace.planner.topology import Topology
from moeplace.planner.workloads import REPLICA_LOAD, busiest_over_mean, pack_robust, robust_counts


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    """One layer: ``N + R`` slots over D devices, no device with two copies of one expert."""
    shares, weights = stats.workload_shares, stats.workload_weights
    copies = robust_counts(shares, weights, topology.num_physical, topology.num_devices)
    experts = np.repeat(np.arange(topology.num_experts), copies)  # [P]: the expert of each copy
    per_copy = (shares / copies).T[experts]  # [P, W]
    devices = pack_robust(per_copy, weights, topology.num_devices, labels=experts)
    order = np.argsort(devices, kind="stable")  # slots device by device, copies in expert order
    busiest = busiest_over_mean(per_copy, devices, topology.num_devices)
    info = {
        "workloads": int(shares.shape[0]),
        "fit_max_mean_load": float(weights @ busiest),
        "fit_worst_workload_max_mean_load": float(busiest.max()),
        "replica_load": REPLICA_LOAD,
    }
    return Solution.from_slots(experts[order], topology, info)


SPEC = SolverSpec(
    solve,
    "load only: replicas and devices that keep balance across the calibration workloads "
    "(the default for load-only statistics)",
    uses_coactivation=False,
    capped=False,
    places_replicas=True,
    compared_by_default=False,
    balances_workloads=True,
)

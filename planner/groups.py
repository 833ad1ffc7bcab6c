"""Placement under group-limited routing (DeepSeek-V3): whole routing groups to regions of devices,
and any solver inside each region.

DeepSeek-V3's router scores G groups of N / G consecutive experts, keeps a token's K best groups
and picks its experts from those. When every node holds whole groups, a token reaches at most K
nodes; a placement that scatters a group over nodes breaks that bound. Modes (``GROUP_MODES``):

- ``nodes``: whole groups to nodes, G / M a node, packed by load heaviest first as DeepSeek's
  hierarchical EPLB does (for a solver that balances workloads, by ``workloads.pack_robust`` on
  every workload's group loads); the solver places each node's experts on its devices (co-activation and
  load cap within the node). Engines that read a placement map (SGLang, vLLM) realize any such
  placement; ``permute-checkpoint`` only when it is also ``permutable``.
- ``permutable``: whole groups to blocks of D / G consecutive devices (or G / D whole groups a
  device): exactly what ``permute-checkpoint`` realizes, since each new group of consecutive
  expert ids is then one old group.
- ``free``: groups ignored (tokens may reach more than K nodes, and the checkpoint cannot be permuted).

Regions are consecutive devices, so a region's physical slots are consecutive too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from moeplace.calibrate.stats import LayerStats, TopkSets
from moeplace.errors import MoeplaceError, did_you_mean
from moeplace.planner.solvers.base import Solution, SolverOptions
from moeplace.planner.solvers.caps import relaxed_report, was_relaxed
from moeplace.planner.solvers.frequency import heaviest_first
from moeplace.planner.topology import Topology
from moeplace.planner.workloads import pack_robust

GROUP_MODES = ("nodes", "permutable", "free")


def num_regions(topology: Topology, groups: int, mode: str) -> int:
    """Regions of consecutive devices that each take G / regions whole groups; raises
    ``MoeplaceError`` when the groups do not split evenly (1 region: no constraint)."""
    if mode not in GROUP_MODES:
        raise MoeplaceError(
            f"group mode must be one of {', '.join(GROUP_MODES)}, got {mode!r}"
            + did_you_mean(mode, GROUP_MODES)
        )
    d, m = topology.num_devices, topology.num_nodes
    if groups <= 1 or mode == "free":
        return 1
    if mode == "nodes":
        if groups % m:
            raise MoeplaceError(
                f"{groups} routing groups do not split evenly over {m} nodes: use fewer nodes, or group "
                "mode free (tokens may then reach more nodes than the routing allows)"
            )
        return m
    if d % groups and groups % d:
        raise MoeplaceError(
            f"{groups} routing groups and {d} devices: a checkpoint permutation needs one to divide the "
            "other; use group mode nodes or free"
        )
    return min(d, groups)


def solve_grouped(
    solve: Callable[[LayerStats, Topology, SolverOptions], Solution],
    stats: LayerStats,
    topology: Topology,
    options: SolverOptions,
) -> Solution:
    """``solve`` run inside each region on the region's experts, after whole groups are packed
    into regions by load; ``options.routing_groups`` G, ``options.group_mode``. The regions share
    the layer's search budgets (``search_steps``, ``time_limit``) equally. The report holds each
    group's region and the regions' max/mean load."""
    groups = options.routing_groups
    regions = num_regions(topology, groups, options.group_mode)
    size = topology.num_experts // groups
    group_load = stats.load.reshape(groups, size).sum(axis=1)
    if stats.workload_share is None:
        region_of_group = heaviest_first(group_load, regions)[0]
    else:  # several workloads: the pairing of groups must hold under each (planner.workloads)
        per_workload = stats.workload_share.reshape(-1, groups, size).sum(axis=2).T  # [G, W]
        region_of_group = pack_robust(per_workload, stats.workload_weights, regions)
    inner = Topology(
        topology.num_experts // regions,
        topology.num_devices // regions,
        1,
        topology.redundant_slots // regions,
    )
    region_load = np.bincount(region_of_group, weights=group_load, minlength=regions)
    device = np.empty(topology.num_experts, np.int64)
    slots, reports = [], []
    for region in range(regions):
        experts = (np.flatnonzero(region_of_group == region)[:, None] * size + np.arange(size)).ravel()
        # the cap is on the whole model's mean device load: a heavy region gets a tighter eps
        tolerance = (1.0 + options.load_tolerance) * region_load.mean() / max(region_load[region], 1) - 1.0
        flat = dataclasses.replace(
            options,
            routing_groups=1,
            load_tolerance=max(0.0, tolerance),
            # the search budgets are per layer: the regions share them
            search_steps=options.search_steps // regions,
            time_limit=options.time_limit / regions,
        )
        solution = solve(restrict(stats, experts), inner, flat)
        device[experts] = solution.expert_to_device + region * inner.num_devices
        if solution.physical_to_logical is not None:
            slots.append(experts[solution.physical_to_logical])
        reports.append(solution.solver_report)
    info = {
        "routing_groups": {
            "groups": groups,
            "mode": options.group_mode,
            "region_of_group": region_of_group.tolist(),
            "region_max_mean_load": float(region_load.max() / region_load.mean())
            if region_load.sum()
            else 1.0,
        },
    } | relaxed_report(any(was_relaxed(report) for report in reports))
    if slots:
        return Solution.from_slots(np.concatenate(slots), topology, info)
    return Solution(device, info)


def restrict(stats: LayerStats, experts: np.ndarray) -> LayerStats:
    """``stats`` of ``experts`` (int ``[n]``) alone, renumbered 0..n-1 in that order: a token's top-k
    set keeps only those experts, and tokens with none of them drop out."""
    local = np.full(stats.num_experts, -1, np.int16)
    local[experts] = np.arange(experts.shape[0])
    sets = None
    if stats.topk_sets is not None:
        rows = np.where(stats.topk_sets.sets >= 0, local[stats.topk_sets.sets], -1)
        rows = np.sort(rows, axis=1).astype(np.int16)
        keep = rows[:, -1] >= 0
        sets = TopkSets(rows[keep], stats.topk_sets.counts[keep])
        sets = TopkSets.merged([sets]) if keep.any() else sets
    return LayerStats(
        load=stats.load[experts],
        coact=None if stats.coact is None else stats.coact[np.ix_(experts, experts)],
        load_resamples=stats.load_resamples[:, experts],
        topk_sets=sets,
        # shares of the whole layer, not renormalized: a heavy region stays heavy in the objective
        workload_share=None if stats.workload_share is None else stats.workload_share[:, experts],
        workload_weight=stats.workload_weight,
    )

"""Re-plans that move few experts: from the placement being served toward what new traffic wants.

Every expert that changes device is a weight transfer the serving engine makes while it serves, so
a re-plan after traffic drifts is worth most when it recovers most of a full re-plan's gain with
few moves. Per layer, from the served placement and on the new traffic's statistics, this runs the
swap descent of the exact local search (``refine``): first the swaps that most reduce load above
the cap (the drift's first symptom), then those that most reduce the fit fan-out, each keeping at
most ``max_moves`` experts away from their served device.
"""

from __future__ import annotations

import dataclasses

from moeplace.calibrate.stats import Statistics
from moeplace.errors import MoeplaceError
from moeplace.planner.objective import fanout
from moeplace.planner.placement import LayerPlacement, Placement, yaml_safe
from moeplace.planner.plan import fit_report
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.solvers.caps import load_caps
from moeplace.planner.solvers.refine import MAX_STEPS_PER_EXPERT, MoveBudget, SwapSearch


def replan(
    stats: Statistics,
    current: Placement,
    max_moves: int,
    options: SolverOptions,
    calibration: dict | None = None,
) -> Placement:
    """``current`` re-planned on ``stats`` (new traffic), at most ``max_moves`` experts moved per
    layer, under ``options.load_tolerance``'s cap on ``stats``. Each layer's report holds the
    moves made and the fit fan-out before and after."""
    if current.redundant_slots:
        raise MoeplaceError("a re-plan moves the experts of a placement without redundant slots")
    if (stats.meta.num_experts, tuple(stats.meta.layer_ids)) != (current.num_experts, current.layer_ids):
        raise MoeplaceError(
            f"the new traffic has {stats.meta.num_experts} experts and MoE layers "
            f"{list(stats.meta.layer_ids)}; the placement {current.num_experts} and {list(current.layer_ids)}"
        )
    if stats.topk_sets is None:
        raise MoeplaceError("a re-plan needs the distinct top-k sets of a per-token trace of the new traffic")
    if max_moves < 0:
        raise MoeplaceError(f"the move budget must be >= 0, got {max_moves}")
    topology = current.topology
    layers = []
    for index, (layer, home) in enumerate(zip(current.layers, current.expert_to_device, strict=True)):
        layer_stats = stats.layer(index)
        caps = load_caps(layer_stats, topology, options.load_tolerance)
        search = SwapSearch.build(layer_stats.topk_sets, topology, caps, options.node_cost)
        budget = MoveBudget(home, max_moves)
        device, swaps, cap_met = search.run(home, MAX_STEPS_PER_EXPERT * topology.num_experts, budget)
        tokens = int(layer_stats.topk_sets.counts.sum())
        report = (
            caps.info()
            | {
                "moves": budget.moved(device),
                "swaps": swaps,
                "cap_met": cap_met,
                "fit_dev_per_token_before": fanout(layer_stats.topk_sets, home) / tokens,
            }
            | fit_report(layer_stats, topology, device)
        )
        layers.append(LayerPlacement(layer.layer_id, device, stats.load[index], yaml_safe(report)))
    return dataclasses.replace(
        current,
        solver="replan",
        options={
            "from": {"solver": current.solver, "calibration": current.calibration},
            "max_moves": max_moves,
            "load_tolerance": options.load_tolerance,
            "load_resamples": int(stats.load_resamples.shape[1]),
            **({"node_cost": options.node_cost} if topology.num_nodes > 1 else {}),
        },
        calibration={} if calibration is None else calibration,
        layers=tuple(layers),
        validation=None,
    )

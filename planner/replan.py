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
import functools
from concurrent.futures import Executor

import numpy as np

from moeplace.calibrate.stats import LayerStats, Statistics
from moeplace.errors import MoeplaceError
from moeplace.planner.objective import fanout
from moeplace.planner.placement import LayerPlacement, Placement, yaml_safe
from moeplace.planner.plan import fit_report
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.solvers.caps import load_caps
from moeplace.planner.solvers.refine import MAX_STEPS_PER_EXPERT, MoveBudget, SwapSearch
from moeplace.planner.topology import Topology


def replan(
    stats: Statistics,
    current: Placement,
    max_moves: int,
    options: SolverOptions,
    calibration: dict | None = None,
    executor: Executor | None = None,
) -> Placement:
    """``current`` re-planned on ``stats`` (new traffic), at most ``max_moves`` experts moved per
    layer, under ``options.load_tolerance``'s cap on ``stats``; layers in parallel with an
    ``executor``. Each layer's report holds the moves made and the fit fan-out before and after."""
    if current.redundant_slots:
        raise MoeplaceError("a re-plan moves the experts of a placement without redundant slots")
    if current.options.get("routing_groups", 1) > 1:
        raise MoeplaceError(
            "a re-plan's swaps may split routing groups: re-plan a placement planned with group mode free, "
            "or plan from scratch"
        )
    check_replan(stats, current, max_moves)
    if stats.topk_sets is None:
        raise MoeplaceError("a re-plan needs the distinct top-k sets of a per-token trace of the new traffic")
    topology = current.topology
    homes = list(current.expert_to_device)
    layer_stats = [stats.layer(index) for index in range(stats.num_layers)]
    replan_one = functools.partial(replan_layer, topology=topology, max_moves=max_moves, options=options)
    results = list((executor.map if executor is not None else map)(replan_one, layer_stats, homes))
    layers = tuple(
        LayerPlacement(layer.layer_id, device, stats.load[index], yaml_safe(report))
        for index, (layer, (device, report)) in enumerate(zip(current.layers, results, strict=True))
    )
    settings = {
        "load_tolerance": options.load_tolerance,
        "load_resamples": int(stats.load_resamples.shape[1]),
        **({"node_cost": options.node_cost} if topology.num_nodes > 1 else {}),
    }
    return replanned(current, stats, max_moves, calibration, layers, settings)


def replanned(
    current: Placement,
    stats: Statistics,
    max_moves: int,
    calibration: dict | None,
    layers: tuple[LayerPlacement, ...],
    settings: dict,
) -> Placement:
    """``current`` with re-planned ``layers``: solver ``replan``, options recording what it moved
    from and the move budget (then ``settings``), the new traffic's ``calibration`` with its
    evidence (``Statistics.evidence``), and no validation yet."""
    return dataclasses.replace(
        current,
        solver="replan",
        options={
            "from": {"solver": current.solver, "calibration": current.calibration},
            "max_moves": max_moves,
        }
        | settings,
        calibration=({} if calibration is None else calibration) | stats.evidence(),
        layers=layers,
        validation=None,
    )


def check_replan(stats: Statistics, current: Placement, max_moves: int) -> None:
    """Raise ``MoeplaceError`` unless ``stats`` is traffic of ``current``'s model layers and the
    move budget is >= 0."""
    if (stats.meta.num_experts, tuple(stats.meta.layer_ids)) != (current.num_experts, current.layer_ids):
        raise MoeplaceError(
            f"the new traffic has {stats.meta.num_experts} experts and MoE layers "
            f"{list(stats.meta.layer_ids)}; the placement {current.num_experts} and {list(current.layer_ids)}"
        )
    if max_moves < 0:
        raise MoeplaceError(f"{{=max_moves}} must be >= 0, got {max_moves}")


def replan_layer(
    stats: LayerStats, home: np.ndarray, topology: Topology, max_moves: int, options: SolverOptions
) -> tuple[np.ndarray, dict]:
    """One layer: the placement int ``[N]`` reached from ``home`` within ``max_moves``, and its report."""
    caps = load_caps(stats, topology, options.load_tolerance)
    search = SwapSearch.build(stats.topk_sets, topology, caps, options.node_cost)
    budget = MoveBudget(home, max_moves)
    device, swaps, cap_met = search.run(home, MAX_STEPS_PER_EXPERT * topology.num_experts, budget)
    tokens = int(stats.topk_sets.counts.sum())
    report = (
        caps.info()
        | {
            **moves_report(budget.moved(device)),
            "swaps": swaps,
            "cap_met": cap_met,
            "fit_dev_per_token_before": fanout(stats.topk_sets, home) / tokens,
        }
        | fit_report(stats, topology, device)
    )
    return device, report


@dataclasses.dataclass(frozen=True)
class Moves:
    """What a re-plan moved: the moves of each layer ``[L]``, what one move is (``expert``: an
    expert changing device; ``slot``: a physical slot changing its expert) and a layer's budget."""

    per_layer: tuple[int, ...]
    unit: str
    budget: int


def moves_report(moves: int) -> dict:
    """How a re-planned layer's report records its moves (``replan`` and ``replan_slots``)."""
    return {"moves": moves}


# what a slot re-plan records in its options: a move is a physical slot changing its expert
SLOT_MOVES = {"moves": "slots"}


def moves_of(placement: Placement) -> Moves:
    """The ``Moves`` recorded in a placement ``replan`` or ``replan_slots`` returned."""
    return Moves(
        tuple(layer.solver_report.get("moves", 0) for layer in placement.layers),
        "slot" if placement.options.get("moves") == SLOT_MOVES["moves"] else "expert",
        placement.options.get("max_moves", 0),
    )

"""Plan a whole model: run one solver on every MoE layer's statistics, optionally across processes."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from concurrent.futures import Executor, as_completed

import numpy as np

from moeplace.calibrate.stats import LayerStats, Statistics
from moeplace.errors import MoeplaceError, did_you_mean
from moeplace.planner.bounds import fanout_lower_bounds
from moeplace.planner.groups import num_regions, solve_grouped
from moeplace.planner.objective import fanout
from moeplace.planner.placement import LayerPlacement, Placement, yaml_safe
from moeplace.planner.replicas import add_replicas, replica_counts
from moeplace.planner.solvers import SOLVERS, Solution, SolverOptions, load_only_solvers
from moeplace.planner.solvers.caps import balance_floor, load_caps
from moeplace.planner.solvers.refine import local_search
from moeplace.planner.topology import Topology


def plan(
    stats: Statistics,
    topology: Topology,
    solver: str,
    options: SolverOptions | None = None,
    calibration: dict | None = None,
    on_layer: Callable[[], None] | None = None,
    executor: Executor | None = None,
) -> Placement:
    """Placement of every MoE layer of ``stats`` by ``solver``.

    ``options`` default to ``SolverOptions()``; ``calibration`` describes the calibration trace
    (``Trace.provenance()``: fingerprint, tokens, documents) for the file, to which the
    statistics' own evidence is added (``Statistics.evidence``: what lets validation recognize a
    calibration document in a held-out trace);
    ``on_layer`` is called as each layer finishes (progress); with an ``executor`` the layers are
    solved in parallel. Layers are independent and solvers deterministic, so the result is the same.
    """
    if solver not in SOLVERS:
        raise MoeplaceError(
            f"unknown solver {solver!r}{did_you_mean(solver, SOLVERS)}; choose from {', '.join(SOLVERS)}"
        )
    options = SolverOptions() if options is None else options
    calibration = ({} if calibration is None else calibration) | stats.evidence()
    spec = SOLVERS[solver]
    if stats.load_only and spec.uses_coactivation:
        raise MoeplaceError(
            f"solver {solver!r} needs co-activation counts, but these statistics hold expert load only "
            f"({stats.meta.source or 'load-only source'}); use solver {' or '.join(load_only_solvers())}, "
            "or record per-token routing (a trace)"
        )
    if (spec.needs_sets or options.refine) and stats.topk_sets is None:
        what = f"solver {solver!r}" if spec.needs_sets else "the exact local search (refine)"
        raise MoeplaceError(
            f"{what} needs the distinct top-k sets of a per-token trace; these statistics have none"
        )
    if not topology.one_copy_fits and not spec.places_replicas:
        replicating = " or ".join(name for name, s in SOLVERS.items() if s.places_replicas)
        raise MoeplaceError(
            f"{topology.num_devices} devices do not divide the {topology.num_experts} experts, so the slots "
            f"fill evenly only with the replicas placed as one; {solver!r} places one copy of each expert "
            f"first: use solver {replicating}"
        )
    if topology.num_experts != stats.meta.num_experts:
        raise MoeplaceError(
            f"topology has {topology.num_experts} experts, statistics {stats.meta.num_experts}"
        )
    if spec.capped:
        check_tolerance(stats, topology, options.load_tolerance)
    options = dataclasses.replace(options, routing_groups=stats.meta.routing_groups or 1)
    grouped = num_regions(topology, options.routing_groups, options.group_mode) > 1
    layers = [stats.layer(i) for i in range(stats.num_layers)]
    if not spec.balances_workloads:  # the others fit the pooled load alone
        layers = [dataclasses.replace(x, workload_share=None, workload_weight=None) for x in layers]
    solutions = solve_layers(solver, layers, topology, options, on_layer, executor)
    return Placement(
        model=stats.meta.model,
        num_experts=stats.meta.num_experts,
        top_k=stats.meta.top_k,
        num_hidden_layers=stats.meta.num_hidden_layers,
        num_devices=topology.num_devices,
        num_nodes=topology.num_nodes,
        redundant_slots=topology.redundant_slots,
        solver=solver,
        options=recorded_options(stats, topology, options, grouped),
        calibration=calibration
        | ({"set_sample_rate": stats.set_sample_rate} if stats.set_sample_rate < 1 else {}),
        layers=tuple(
            LayerPlacement(
                layer_id,
                solution.expert_to_device,
                layers[i].load,  # what the solver fit: with workloads, their weighted shares
                yaml_safe(solution.solver_report),
                solution.physical_to_logical,
            )
            for i, (layer_id, solution) in enumerate(zip(stats.meta.layer_ids, solutions, strict=True))
        ),
    )


def solve_layers(
    solver: str,
    layers: list[LayerStats],
    topology: Topology,
    options: SolverOptions,
    on_layer: Callable[[], None] | None,
    executor: Executor | None,
) -> list[Solution]:
    """``solve_layer`` on every layer, in this process or on ``executor``, in layer order;
    ``on_layer()`` as each finishes."""
    if executor is None:
        solutions = []
        for layer in layers:
            solutions.append(solve_layer(solver, layer, topology, options))
            if on_layer is not None:
                on_layer()
        return solutions
    futures = [executor.submit(solve_layer, solver, layer, topology, options) for layer in layers]
    for _ in as_completed(futures):
        if on_layer is not None:
            on_layer()
    return [future.result() for future in futures]


def recorded_options(stats: Statistics, topology: Topology, options: SolverOptions, grouped: bool) -> dict:
    """What the placement file records of how it was planned: the options, the load resamples
    the cap held on, and the node cost and group mode where they applied."""
    return {
        "load_tolerance": options.load_tolerance,
        "load_resamples": int(stats.load_resamples.shape[1]),
        **({"load_resamples_by": stats.resample_by} if stats.resample_by != "documents" else {}),
        "seed": options.seed,
        "time_limit": options.time_limit,
        "search_steps": options.search_steps,
        "refine": options.refine,
        **({"node_cost": options.node_cost} if topology.num_nodes > 1 else {}),
        **({"routing_groups": options.routing_groups, "group_mode": options.group_mode} if grouped else {}),
    }


def balance_floors(stats: Statistics, topology: Topology) -> np.ndarray:
    """Per layer ``[L]``, the lowest calibration max/mean load any placement can reach: its hottest
    expert (or, with redundant slots, hottest replica share) alone on one device."""
    floors = []
    for load in stats.load:
        if topology.redundant_slots:  # replicas split a hot expert's load
            load = load // replica_counts(load, topology)
        floors.append(balance_floor(load, topology.num_devices))
    return np.array(floors)


def least_tolerance(stats: Statistics, topology: Topology) -> float:
    """The smallest eps (rounded up to 0.001) that every layer's balance floor allows."""
    return math.ceil((balance_floors(stats, topology).max() - 1.0) * 1000) / 1000


def check_tolerance(stats: Statistics, topology: Topology, tolerance: float) -> None:
    """Raise ``MoeplaceError`` if some layer's balance floor is above 1 + ``tolerance``: then no
    placement can keep that layer's calibration load under the cap (its hottest expert alone, or
    replica, exceeds it), and a capped solver would only be pretending to hold it."""
    floors = balance_floors(stats, topology)
    worst = int(floors.argmax())
    over = int(np.count_nonzero(floors > 1.0 + tolerance + 1e-9))
    if over:
        raise MoeplaceError(
            f"load tolerance {tolerance:g} cannot be met at D={topology.num_devices}: the hottest expert "
            f"of MoE layer {stats.meta.layer_ids[worst]} alone is {floors[worst]:.3f} x the mean device "
            f"load (its balance floor; {over} layer(s) above 1 + eps); use a load tolerance >= "
            f"{least_tolerance(stats, topology):.3f}, redundant slots, or fewer devices"
        )


# Fit figures of a placement without replicas; the replica report has its own.
FIT_FIGURES = ("fit_dev_per_token", "lower_bound_dev_per_token", "bound_gap")


def solve_layer(solver: str, stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    """One layer: the solver, the exact local search after it if asked, and the fit fan-out beside
    its lower bounds (when the statistics have top-k sets); then replicas, if the topology has
    redundant slots and the solver does not place them itself."""
    spec = SOLVERS[solver]
    if num_regions(topology, options.routing_groups, options.group_mode) > 1:
        solution = solve_grouped(functools.partial(solve_layer, solver), stats, topology, options)
        if stats.topk_sets is not None and not topology.redundant_slots:
            solution.info.update(fit_report(stats, topology, solution.expert_to_device))
        return solution
    if topology.redundant_slots and spec.places_replicas:
        return spec.solve(stats, topology, options)
    if topology.redundant_slots:
        if stats.topk_sets is None:
            replicating = (name for name, s in SOLVERS.items() if s.places_replicas)
            raise MoeplaceError(
                f"placing replicas after {solver!r} needs the top-k sets of a per-token trace; "
                f"use solver {' or '.join(replicating)} with load-only statistics"
            )
        # the primaries are placed for the load each will keep once its replicas take their share
        copies = replica_counts(stats.load, topology)
        shared = dataclasses.replace(
            stats, load=stats.load // copies, load_resamples=stats.load_resamples // copies[None, :]
        )
        solution = solve_layer(solver, shared, topology.without_replicas, options)
        slots, report = add_replicas(stats, topology, solution.expert_to_device, options)
        info = {key: value for key, value in solution.solver_report.items() if key not in FIT_FIGURES}
        return Solution.from_slots(slots, topology, info | {"replicas": report})
    solution = spec.solve(stats, topology, options)
    expert_to_device, info = solution.expert_to_device, dict(solution.solver_report)
    if options.refine and not spec.refines:
        caps = load_caps(stats, topology, options.load_tolerance)
        expert_to_device, info["refine"] = local_search(stats, topology, caps, expert_to_device, options)
    if stats.topk_sets is not None:
        info |= fit_report(stats, topology, expert_to_device, solution)
    return Solution(expert_to_device, info)


def fit_report(
    stats: LayerStats, topology: Topology, expert_to_device: np.ndarray, solution: Solution | None = None
) -> dict[str, float]:
    """``FitFigures`` of ``expert_to_device`` int ``[N]`` on ``stats`` (with top-k sets), as a layer's
    report records them: its fit dev/token, the best lower bound (with the solver's own proven
    bounds, if any) and the gap."""
    tokens = int(stats.topk_sets.counts.sum())
    fit = fanout(stats.topk_sets, expert_to_device)
    proven = (
        (None, None) if solution is None else (solution.bound_colocated_coactivation, solution.bound_fanout)
    )
    bound = fanout_lower_bounds(stats, topology, *proven)["best"]
    return FitFigures(fit / tokens, bound / tokens, 1.0 - bound / fit if fit else 0.0).report()


@dataclasses.dataclass(frozen=True)
class FitFigures:
    """A placement's devices per token on its calibration top-k sets, the best proven lower bound
    on it, and the gap between them (1 - bound / fit): of one layer, or means over layers."""

    dev_per_token: float
    lower_bound_dev_per_token: float
    bound_gap: float

    def report(self) -> dict[str, float]:
        """The figures as a layer's ``solver_report`` and a comparison row record them."""
        figures = (self.dev_per_token, self.lower_bound_dev_per_token, self.bound_gap)
        return dict(zip(FIT_FIGURES, figures, strict=True))

    @classmethod
    def of_layer(cls, report: dict) -> FitFigures | None:
        """A layer's figures read back from its ``solver_report`` (None: it has none, as without
        top-k sets or with replicas)."""
        if FIT_FIGURES[0] not in report:
            return None
        return cls(*(float(report[name]) for name in FIT_FIGURES))


def calibration_fit(placement: Placement) -> FitFigures | None:
    """Means over layers of ``placement``'s fit figures (the gap that of the means); None unless
    every layer records them."""
    layers = [FitFigures.of_layer(layer.solver_report) for layer in placement.layers]
    if not layers or any(figures is None for figures in layers):
        return None
    fit = float(np.mean([figures.dev_per_token for figures in layers]))
    bound = float(np.mean([figures.lower_bound_dev_per_token for figures in layers]))
    return FitFigures(fit, bound, 1.0 - bound / fit)

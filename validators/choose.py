"""``--load-tolerance auto``: the point of the balance frontier whose serving step is cheapest.

A tighter load cap keeps the compute straggler near frequency's; a looser one cuts more traffic
and loads the busiest rank more. Which wins depends on the step (phase, batch, kernel, hardware),
so this plans the solver at each tolerance of a grid, replays the *calibration* trace as serving
steps on each placement and on the frequency baseline (never the held-out trace, which judges
the choice afterwards), and keeps the cheapest. When no tolerance beats frequency, frequency is the
plan: co-location does not pay that step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.trace import Trace
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement
from moeplace.planner.plan import plan
from moeplace.planner.solvers import BASELINE, SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.profile import step_time
from moeplace.validators.report import StepSetting
from moeplace.validators.step import step_cost

AUTO_TOLERANCES = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)


@dataclasses.dataclass(frozen=True)
class Choice:
    """The chosen placement and the estimated step (seconds, on the calibration trace) of every
    candidate: ``{"frequency": s, "eps=0.02": s, ...}``; ``tolerance`` None when frequency won."""

    placement: Placement
    tolerance: float | None
    estimates: dict[str, float]


def choose_tolerance(
    trace: Trace,
    stats: Statistics,
    topology: Topology,
    solver: str,
    options: SolverOptions,
    setting: StepSetting,
    provenance: dict,
    plan_layers: Callable[..., Placement] = plan,
    tolerances: tuple[float, ...] = AUTO_TOLERANCES,
) -> Choice:
    """Plan ``solver`` at each of ``tolerances`` (those the balance floor allows) and frequency;
    keep the one whose serving step, replayed on ``trace`` (the calibration trace), is cheapest.
    ``plan_layers(stats, topology, solver, options, provenance)`` plans (progress, pools)."""

    def seconds(placement: Placement) -> float:
        cost = step_cost(placement.physical_to_logical, trace, topology, setting.workload)
        return step_time(cost, setting.shape, setting.profile, setting.workload.kernel).total(setting.overlap)

    candidates = [(BASELINE, None, plan_layers(stats, topology, BASELINE, options, provenance))]
    for eps in tolerances:
        try:
            run = dataclasses.replace(options, load_tolerance=eps)
            candidates.append((f"eps={eps:g}", eps, plan_layers(stats, topology, solver, run, provenance)))
        except MoeplaceError:  # below a layer's balance floor: no placement meets this cap
            continue
    estimates = {name: seconds(placement) for name, _, placement in candidates}
    _, eps, placement = min(candidates, key=lambda c: estimates[c[0]])  # ties: the first, frequency
    return Choice(placement, eps, estimates)

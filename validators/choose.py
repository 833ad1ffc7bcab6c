"""``--load-tolerance auto``: the plan whose serving step is cheapest, or load balancing; and
``--group-mode auto``: routing groups kept on nodes or not, whichever step is cheaper.

A tighter load cap keeps the compute straggler near frequency's; a looser one cuts more traffic
and loads the busiest rank more. Which wins depends on the step (phase, batch, kernel, hardware),
so this plans the solver at each tolerance of a grid, replays the *calibration* trace as serving
steps on each placement and on the load balancers (frequency, and EPLB with the same slots; never
the held-out trace, which judges the choice afterwards), and keeps the cheapest. Equal estimates
go to less communication: traffic hidden under compute still holds links and SMs. When a balancer
wins, that is the plan: co-location does not pay that step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.synthetic import FIT_POOL, FittedRouting, routing_from_load
from moeplace.calibrate.trace import Trace
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement
from moeplace.planner.solvers import BASELINE, SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.profile import StepTime
from moeplace.validators.report import StepSetting
from moeplace.validators.step import filling_documents

AUTO_TOLERANCES = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)
BALANCERS = (BASELINE, "eplb")  # load balancing only: the plans co-location must beat
SERVED = "served"  # a re-plan's candidate that moves nothing
AUTO_GROUP_MODES = ("nodes", "free")  # what --group-mode auto weighs


@dataclasses.dataclass(frozen=True)
class Choice:
    """The chosen placement, its candidate's name (``"frequency"``, ``"eplb"`` or ``"eps=0.02"``),
    its tolerance (None for a balancer) and the estimated step of every candidate on the
    calibration trace."""

    placement: Placement
    name: str
    tolerance: float | None
    times: dict[str, StepTime]
    overlap: bool

    @property
    def estimates(self) -> dict[str, float]:
        """Seconds per step of every candidate."""
        return {name: t.total(self.overlap) for name, t in self.times.items()}

    def verdict(self, kernel: str) -> str:
        """Why the choice, in a line."""
        if self.tolerance is not None:
            return f"eps {self.tolerance:g}: co-location pays this step"
        if self.name == SERVED:
            return (
                f"{SERVED}: no re-plan within the move budget shortens this step; keep the served placement"
            )
        chosen = self.times[self.name]
        if kernel == "expert":
            why = "the kernel sends one message per expert, so co-location saves no bytes"
        elif self.overlap and chosen.compute >= chosen.communication:
            why = "the step waits on expert compute, which co-location can only make less even"
        else:
            why = "its traffic savings cost more in compute imbalance than they save"
        return f"{self.name}: co-location does not pay this step ({why}); balance load instead"


def plan_balancers(plan_at: Callable[[str, SolverOptions], Placement], options: SolverOptions) -> dict:
    """The load balancers (``BALANCERS``), by name, each ``plan_at(name, options)``: the candidates
    ``choose_tolerance`` weighs the solver's tolerances against."""
    return {name: plan_at(name, options) for name in BALANCERS}


def choose_tolerance(
    trace: Trace,
    topology: Topology,
    setting: StepSetting,
    plan_at: Callable[[SolverOptions], Placement],
    options: SolverOptions,
    fixed: dict[str, Placement],
    tolerances: tuple[float, ...] = AUTO_TOLERANCES,
) -> Choice:
    """Plan at each of ``tolerances`` (those the balance floor allows): ``plan_at(options)`` plans
    the solver, or a re-plan's moves, on the calibration statistics. Keep the candidate, or one of
    ``fixed`` (candidates without a tolerance, by name: the balancers, ``plan_balancers``, or a
    re-plan's served placement, since a balancer moves too much), whose serving step replayed on
    ``trace`` (the calibration trace) is cheapest, ties to less communication."""
    candidates = [(name, None, placement) for name, placement in fixed.items()]
    for eps in tolerances:
        try:
            candidates.append(
                (f"eps={eps:g}", eps, plan_at(dataclasses.replace(options, load_tolerance=eps)))
            )
        except MoeplaceError:  # below a layer's balance floor: no placement meets this cap
            continue
    times = replay_times({name: placement for name, _, placement in candidates}, trace, topology, setting)
    name, eps, placement = next(c for c in candidates if c[0] == cheapest(times, setting.overlap))
    return Choice(placement, name, eps, times, setting.overlap)


def choose_group_mode(
    trace: Trace,
    topology: Topology,
    setting: StepSetting,
    plan_at: Callable[[SolverOptions], Placement],
    options: SolverOptions,
) -> Choice:
    """``--group-mode auto``: ``plan_at(options)`` (the solver on the calibration statistics) with
    each routing group kept on one node and with the groups ignored (``AUTO_GROUP_MODES``), and
    keep the mode whose serving step, replayed on ``trace``, is cheapest. Keeping groups on nodes
    bounds the nodes a token reaches by the routing's group limit; ignoring them leaves the solver
    free to balance load. ``trace``: the calibration trace, or for load records routing fitted to
    their load."""
    placements = {mode: plan_at(dataclasses.replace(options, group_mode=mode)) for mode in AUTO_GROUP_MODES}
    times = replay_times(placements, trace, topology, setting)
    name = cheapest(times, setting.overlap)
    return Choice(placements[name], name, None, times, setting.overlap)


def fitted_steps(stats: Statistics, setting: StepSetting, num_ranks: int, seed: int = 0) -> FittedRouting:
    """What ``--group-mode auto`` replays for load records, which hold no per-token routing:
    routing fitted to their pooled load (``routing_from_load``), in requests that fill whole steps
    of ``num_ranks`` ranks under ``setting``, at least twice the fitted pool of tokens."""
    lengths = filling_documents(setting.workload, num_ranks, 2 * FIT_POOL)
    return routing_from_load(stats.pooled_load(), stats.meta, lengths, seed)


def group_mode_verdict(choice: Choice) -> str:
    """Why ``choose_group_mode`` chose its mode, in a line."""
    other = next(mode for mode in choice.times if mode != choice.name)
    gain = 1.0 - choice.estimates[choice.name] / choice.estimates[other]
    if gain < 5e-4:  # a tie, gone to less communication
        chosen, rival = choice.times[choice.name].communication, choice.times[other].communication
        return (
            f"group mode {choice.name}: as long as {other} (the step waits on expert compute either way), "
            f"with {1.0 - chosen / rival:.1%} less communication"
        )
    if choice.name == "nodes":
        why = "tokens reach fewer nodes, and that saves more than the less even load costs"
    else:
        why = "the even load saves more than keeping tokens on fewer nodes would"
    return f"group mode {choice.name}: {gain:.1%} shorter than {other}; {why}"


def replay_times(
    placements: dict[str, Placement], trace: Trace, topology: Topology, setting: StepSetting
) -> dict[str, StepTime]:
    """The estimated step of each placement, by name, replaying ``trace``."""
    return {name: setting.replay(p.physical_to_logical, trace, topology)[1] for name, p in placements.items()}


def cheapest(times: dict[str, StepTime], overlap: bool) -> str:
    """The name of the shortest step; equal steps go to less communication, then to the first."""
    return min(times, key=lambda name: (times[name].total(overlap), times[name].communication))

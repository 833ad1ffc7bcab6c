"""A row of ``moeplace compare``'s table, typed: one plan scored on the held-out trace, and the
record the CSV and JSON table hold of it."""

from __future__ import annotations

import dataclasses

from moeplace.planner.placement import yaml_safe
from moeplace.planner.plan import FitFigures
from moeplace.validators.report import StepComparison
from moeplace.validators.score import Headline


@dataclasses.dataclass(frozen=True)
class StepFigures:
    """A comparison row's serving step (a model): the busiest rank's phases and the step in ms,
    the change against the baseline and against the better balancer (1 - step / theirs), which
    balancer that is, and the busiest rank's received tokens and token-expert pairs per token of
    its batch (6 digits, as the placement file records them)."""

    dispatch_ms: float
    compute_ms: float
    combine_ms: float
    moe_ms: float
    step_ms: float
    step_speedup: float
    step_vs_best_balancer: float
    best_balancer: str
    received_straggler: float
    pairs_straggler: float

    @classmethod
    def of(cls, steps: StepComparison) -> StepFigures:
        traffic = steps.cost.traffic()
        return cls(
            dispatch_ms=steps.time.dispatch * 1e3,
            compute_ms=steps.time.compute * 1e3,
            combine_ms=steps.time.combine * 1e3,
            moe_ms=steps.time.moe(steps.overlap) * 1e3,
            step_ms=steps.time.total(steps.overlap) * 1e3,
            step_speedup=steps.speedup,
            step_vs_best_balancer=steps.speedup_vs_best,
            best_balancer=steps.best_balancer,
            received_straggler=yaml_safe(traffic.received_straggler),
            pairs_straggler=yaml_safe(traffic.pairs_straggler),
        )


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """One plan of a comparison, scored on the held-out trace.

    Attributes:
        devices, solver: the plan's D and solver.
        load_tolerance: its eps; None for a solver without a load cap.
        redundant_slots: its R; None when the comparison plans no replicas.
        held_out: its held-out figures; ``node_per_token`` is reported only with ``nodes``.
        reduction: 1 - held-out dev/token / the baseline's.
        nodes: the devices sit in more than one node.
        fit: the calibration fit beside its lower bound (None without top-k sets).
        step: the serving step (None without ``--step``).
        oracle: the same solver fit on the held-out trace itself (None without ``--oracle``).
        seconds: plan time on this machine (printed, never written to a file).
        dominated_by: the row of the same D and R that beats this one on held-out dev/token and
            max/mean load, by label ("" for none).
    """

    devices: int
    solver: str
    load_tolerance: float | None
    redundant_slots: int | None
    held_out: Headline
    reduction: float
    nodes: bool
    fit: FitFigures | None
    step: StepFigures | None
    oracle: Headline | None
    seconds: float
    dominated_by: str = ""

    @property
    def series(self) -> str:
        """The line the row belongs to in a plot: its solver, and its replicas if it has any."""
        return self.solver + (f" +{self.redundant_slots} replicas" if self.redundant_slots else "")

    @property
    def label(self) -> str:
        """The row's series, with its eps where it has one."""
        eps = self.load_tolerance
        return self.series if eps is None else f"{self.series} eps={eps:g}"

    def record(self) -> dict:
        """The row of the CSV and JSON table (``COLUMNS``' names; the columns the options add)."""
        held_out = self.held_out
        row = {"devices": self.devices, "solver": self.solver, "load_tolerance": self.load_tolerance}
        row |= {} if self.redundant_slots is None else {"redundant_slots": self.redundant_slots}
        row["dev_per_token"] = held_out.dev_per_token
        row |= {"node_per_token": held_out.node_per_token} if self.nodes else {}
        row |= {
            "load_cv": held_out.load_cv,
            "max_mean_load": held_out.max_mean_load,
            "worst_layer_max_mean_load": held_out.worst_layer_max_mean_load,
            "reduction": self.reduction,
        }
        row |= {} if self.fit is None else self.fit.report()
        row |= {} if self.step is None else dataclasses.asdict(self.step)
        if self.oracle is not None:
            row["oracle_dev_per_token"] = self.oracle.dev_per_token
            row["oracle_max_mean_load"] = self.oracle.max_mean_load
            row["oracle_gap"] = row["dev_per_token"] / row["oracle_dev_per_token"] - 1.0
        return row | {"seconds": self.seconds, "dominated_by": self.dominated_by}

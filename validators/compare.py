"""Solver x device count x load tolerance: fit on one split, score on the other; table and CSV.

Each row holds the held-out figures (dev/token, reduction vs frequency, load-CV, max/mean load),
the fit figures beside the best lower bound (how far the search could still be from optimal), and,
with ``oracle``, the same solver fit on the held-out trace itself (how much is lost to
generalization rather than search). The oracle must also keep the load cap on the held-out data,
which a placement fit elsewhere is only judged on, so its max/mean is shown beside it. Rows another
row beats on both held-out dev/token and max/mean load at the same device count are marked as
dominated.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path

from moeplace.atomic import write_bytes, write_text
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.trace import Trace
from moeplace.planner.placement import Placement
from moeplace.planner.plan import calibration_fit, plan
from moeplace.planner.solvers import BASELINE, SOLVERS, SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.comparison_row import ComparisonRow, StepFigures
from moeplace.validators.plots import devices_png, frontier_png, steps_png
from moeplace.validators.report import StepSetting, compare_steps, step_gate_minimum, validate

COLUMNS = {  # CSV name -> Markdown header
    "devices": "D",
    "solver": "solver",
    "redundant_slots": "R",
    "load_tolerance": "eps",
    "dev_per_token": "dev/token",
    "reduction": f"reduction vs {BASELINE}",
    "load_cv": "load-CV",
    "max_mean_load": "max/mean load",
    "worst_layer_max_mean_load": "worst layer max/mean",
    "node_per_token": "nodes/token",
    "dispatch_ms": "est. dispatch (ms)",
    "compute_ms": "est. compute (ms)",
    "combine_ms": "est. combine (ms)",
    "moe_ms": "est. MoE part (ms)",
    "step_ms": "est. whole step (ms)",
    "step_speedup": f"step vs {BASELINE}",
    "step_vs_best_balancer": "step vs better balancer",
    "best_balancer": "better balancer",
    "received_straggler": "busiest rank received/token",
    "pairs_straggler": "busiest rank pairs/token",
    "fit_dev_per_token": "fit dev/token",
    "lower_bound_dev_per_token": "lower bound",
    "bound_gap": "bound gap",
    "oracle_dev_per_token": "oracle dev/token",
    "oracle_max_mean_load": "oracle max/mean",
    "oracle_gap": "oracle gap",
    "dominated_by": "dominated by",
    "seconds": "plan time (s)",
}
TIMED = ("seconds",)  # measured on this machine: printed, never written to a file


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``rows``: one per (devices, solver, tolerance, redundant slots); ``placements``: the same,
    validated, keyed ``(devices, solver, tolerance or None, redundant slots)``."""

    rows: list[ComparisonRow]
    placements: dict[tuple[int, str, float | None, int], Placement]
    title: str


def compare(
    fit: Trace,
    holdout: Trace,
    devices: Sequence[int],
    solvers: Sequence[str],
    tolerances: Sequence[float],
    options: SolverOptions,
    resamples: int,
    oracle: bool = False,
    on_layer: Callable[[], None] | None = None,
    executor: Executor | None = None,
    nodes: int = 1,
    redundant_slots: Sequence[int] = (0,),
    step: StepSetting | None = None,
    resample_by: str = "documents",
) -> Comparison:
    """Plan ``fit`` with every solver, device count and tolerance; validate each on ``holdout``.

    With ``nodes`` > 1 the devices sit in that many nodes and rows report nodes/token too; with
    each ``redundant_slots`` R > 0 every device count is also planned with R replicas (scored with
    the dispatch policy), in rows of their own.

    Solvers that ignore the load cap (not ``SolverSpec.capped``: ``random``, ``frequency``,
    ``greedy``, ``eplb``) run once per device count, unless ``options.refine`` puts the capped local
    search after them.
    With a ``step`` setting, rows also hold the serving step (a model): the busiest rank's
    estimated dispatch, compute and combine time, the step, its change against the baseline, and
    the busiest rank's received tokens and pairs per token; frequency and eplb are then always
    among the solvers, the references a step is read against.
    """
    if step is not None:
        solvers = list(dict.fromkeys([BASELINE, "eplb", *solvers]))
    stats = compute_statistics(fit, resamples=resamples, seed=options.seed, resample_by=resample_by)
    held_stats = (
        compute_statistics(holdout, resamples=resamples, seed=options.seed, resample_by=resample_by)
        if oracle
        else None
    )
    # fail early on a bad count
    topologies = [Topology(fit.meta.num_experts, d, nodes, r) for d in devices for r in redundant_slots]
    rows, placements = [], {}
    for topology in topologies:
        for solver in solvers:
            for eps in tolerances if options.refine or SOLVERS[solver].capped else [None]:
                run = dataclasses.replace(
                    options, load_tolerance=eps if eps is not None else options.load_tolerance
                )
                start = time.perf_counter()
                placement = plan(stats, topology, solver, run, fit.provenance(), on_layer, executor)
                seconds = time.perf_counter() - start
                validation = validate(placement, holdout)
                placement = validation.recorded_placement()
                placements[topology.num_devices, solver, eps, topology.redundant_slots] = placement
                oracle_headline = None
                if held_stats is not None:
                    best = plan(held_stats, topology, solver, run, holdout.provenance(), on_layer, executor)
                    oracle_headline = validate(best, holdout, allow_overlap=True).score.headline  # fit on it
                row = ComparisonRow(
                    devices=topology.num_devices,
                    solver=solver,
                    load_tolerance=eps,
                    redundant_slots=topology.redundant_slots if any(redundant_slots) else None,
                    held_out=validation.score.headline,
                    reduction=validation.reduction,
                    nodes=nodes > 1,
                    fit=calibration_fit(placement),
                    step=None if step is None else StepFigures.of(compare_steps(validation, step)),
                    oracle=oracle_headline,
                    seconds=round(seconds, 2),
                )
                rows.append(row)
    rows = mark_dominated(rows)
    tolerance_text = ", ".join(f"{t:g}" for t in tolerances)
    title = (
        f"{fit.meta.model}: fit on {fit.num_documents} documents ({fit.num_tokens} tokens), "
        f"scored on {holdout.num_documents} held-out documents ({holdout.num_tokens} tokens); "
        f"load tolerance {tolerance_text}"
        + (f"; {nodes} nodes, node cost {options.node_cost:g}" if nodes > 1 else "")
        + (f"; R = {', '.join(map(str, redundant_slots))} redundant slots" if any(redundant_slots) else "")
        + (f"; serving step: {_step_text(step)}" if step is not None else "")
    )
    return Comparison(rows, placements, title)


def _step_text(step: StepSetting) -> str:
    w = step.workload
    return f"{w.phase}, {w.batch_text}, kernel {w.kernel} ({step.profile.assumptions()})"


def step_gate_failures(rows: list[ComparisonRow], min_speedup: float | None = None) -> list[str]:
    """The rows of co-location solvers whose estimated step is slower than the better balancer's
    by more than ``min_speedup`` allows (``StepComparison.verdict``'s rule, read off the rows)."""
    limit = step_gate_minimum(min_speedup)
    return [
        f"{row.label}, D={row.devices}: estimated step speedup {row.step.step_vs_best_balancer:+.1%} vs "
        f"{row.step.best_balancer}, the better balancer, below the minimum {limit:+.1%}"
        for row in rows
        if row.step is not None
        and row.solver not in (BASELINE, "eplb")
        and not row.step.step_vs_best_balancer >= limit
    ]


def mark_dominated(rows: list[ComparisonRow]) -> list[ComparisonRow]:
    """``rows`` with ``dominated_by`` set where another row of the same D (and R) beats the row on
    held-out dev/token and load."""

    def beats(other: ComparisonRow, row: ComparisonRow) -> bool:
        ours, theirs = row.held_out, other.held_out
        return (
            (other.devices, other.redundant_slots) == (row.devices, row.redundant_slots)
            and theirs.dev_per_token <= ours.dev_per_token
            and theirs.max_mean_load <= ours.max_mean_load
            and (theirs.dev_per_token < ours.dev_per_token or theirs.max_mean_load < ours.max_mean_load)
        )

    marked = []
    for row in rows:
        rivals = [other for other in rows if beats(other, row)]
        best = min(rivals, key=lambda r: r.held_out.dev_per_token, default=None)
        marked.append(dataclasses.replace(row, dominated_by="" if best is None else best.label))
    return marked


def markdown_table(rows: list[ComparisonRow], plan_times: bool = True) -> str:
    """The comparison as a Markdown table; columns no row has are left out, and the plan times
    unless ``plan_times`` (files leave them out: same inputs, same bytes)."""
    records = [row.record() for row in rows]
    columns = [
        key
        for key in COLUMNS
        if (any(record.get(key) not in (None, "") for record in records) or key == "solver")
        and (plan_times or key not in TIMED)
    ]
    lines = ["| " + " | ".join(COLUMNS[key] for key in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(key, record.get(key)) for key in columns) + " |" for record in records]
    return "\n".join(lines) + "\n"


SIGNED_SHARES = ("reduction", "step_speedup", "step_vs_best_balancer")  # columns shown as +x.x%


def _fmt(key: str, value) -> str:
    if value is None or value == "":
        return "-"
    if key in SIGNED_SHARES:
        return f"{value:+.1%}"
    if key in ("bound_gap", "oracle_gap"):
        return f"{value:.1%}"
    if key == "load_tolerance":
        return f"{value:g}"
    if isinstance(value, float):
        return f"{value:.1f}" if key == "seconds" else f"{value:.3f}"
    return str(value)


COMPARISON_KINDS = ("md", "csv", "png")  # comparison.<kind> in the output folder
COMPARISON_FILES = (*(f"comparison.{kind}" for kind in COMPARISON_KINDS), "steps.png")  # with a step


def write_comparison(comparison: Comparison, out_dir: Path) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison.png`` into ``out_dir``, and with
    step figures ``steps.png``, their time breakdown.

    The plot is the balance frontier (held-out dev/token against max/mean load, one panel per
    device count) when several tolerances were compared, else both figures against device count.
    """
    paths = {kind: out_dir / f"comparison.{kind}" for kind in COMPARISON_KINDS}
    write_text(paths["md"], f"{comparison.title}\n\n{markdown_table(comparison.rows, plan_times=False)}")
    buffer = io.StringIO()
    fields = [key for key in COLUMNS if key not in TIMED]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(row.record() for row in comparison.rows)
    write_text(paths["csv"], buffer.getvalue())
    tolerances = {row.load_tolerance for row in comparison.rows} - {None}
    plot = frontier_png if len(tolerances) > 1 else devices_png
    write_bytes(paths["png"], plot(comparison.rows, comparison.title))
    if all(row.step is not None for row in comparison.rows):
        paths["steps"] = out_dir / COMPARISON_FILES[-1]
        write_bytes(paths["steps"], steps_png(comparison.rows, comparison.title))
    return paths

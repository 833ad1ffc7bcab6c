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
from moeplace.planner.placement import Placement, yaml_safe
from moeplace.planner.plan import calibration_fit, plan
from moeplace.planner.solvers import BASELINE, SOLVERS, SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.plots import devices_png, frontier_png, series, steps_png
from moeplace.validators.report import StepComparison, StepSetting, compare_steps, step_gate_minimum, validate

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
    """``rows``: one dict per (devices, solver, tolerance, redundant slots); ``placements``: the
    same, validated, keyed ``(devices, solver, tolerance or None, redundant slots)``."""

    rows: list[dict]
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
                row = {"devices": topology.num_devices, "solver": solver, "load_tolerance": eps}
                if any(redundant_slots):
                    row["redundant_slots"] = topology.redundant_slots
                figures = dataclasses.asdict(validation.score.headline) | {"reduction": validation.reduction}
                fitted = calibration_fit(placement)
                row |= {k: v for k, v in figures.items() if k in COLUMNS} | (
                    {} if fitted is None else fitted.report()
                )
                if nodes == 1:
                    del row["node_per_token"]
                if step is not None:
                    row |= step_columns(compare_steps(validation, step))
                if held_stats is not None:
                    best = plan(held_stats, topology, solver, run, holdout.provenance(), on_layer, executor)
                    oracle = validate(best, holdout, allow_overlap=True).score.headline  # fit on it
                    row["oracle_dev_per_token"] = oracle.dev_per_token
                    row["oracle_max_mean_load"] = oracle.max_mean_load
                    row["oracle_gap"] = row["dev_per_token"] / row["oracle_dev_per_token"] - 1.0
                rows.append(row | {"seconds": round(seconds, 2)})
    mark_dominated(rows)
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


def step_columns(steps: StepComparison) -> dict:
    """A comparison row's serving-step figures."""
    traffic = steps.cost.traffic()
    return {
        "dispatch_ms": steps.time.dispatch * 1e3,
        "compute_ms": steps.time.compute * 1e3,
        "combine_ms": steps.time.combine * 1e3,
        "moe_ms": steps.time.moe(steps.overlap) * 1e3,
        "step_ms": steps.time.total(steps.overlap) * 1e3,
        "step_speedup": steps.speedup,
        "step_vs_best_balancer": steps.speedup_vs_best,
        "best_balancer": steps.best_balancer,
        # as the placement file records them (``yaml_safe``: 6 digits)
        "received_straggler": yaml_safe(traffic.received_straggler),
        "pairs_straggler": yaml_safe(traffic.pairs_straggler),
    }


def step_gate_failures(rows: list[dict], min_speedup: float | None = None) -> list[str]:
    """The rows of co-location solvers whose estimated step is slower than the better balancer's
    by more than ``min_speedup`` allows (``StepComparison.verdict``'s rule, read off the rows)."""
    limit = step_gate_minimum(min_speedup)
    return [
        f"{_label(row)}, D={row['devices']}: estimated step speedup {row['step_vs_best_balancer']:+.1%} vs "
        f"{row['best_balancer']}, the better balancer, below the minimum {limit:+.1%}"
        for row in rows
        if "step_vs_best_balancer" in row
        and row["solver"] not in (BASELINE, "eplb")
        and not row["step_vs_best_balancer"] >= limit
    ]


def mark_dominated(rows: list[dict]) -> None:
    """Set ``dominated_by`` on rows another row of the same D (and R) beats on held-out dev/token
    and load."""
    for row in rows:
        rivals = [
            other
            for other in rows
            if (other["devices"], other.get("redundant_slots"))
            == (row["devices"], row.get("redundant_slots"))
            and other["dev_per_token"] <= row["dev_per_token"]
            and other["max_mean_load"] <= row["max_mean_load"]
            and (
                other["dev_per_token"] < row["dev_per_token"] or other["max_mean_load"] < row["max_mean_load"]
            )
        ]
        best = min(rivals, key=lambda r: r["dev_per_token"], default=None)
        row["dominated_by"] = "" if best is None else _label(best)


def _label(row: dict) -> str:
    eps = row["load_tolerance"]
    return series(row) if eps is None else f"{series(row)} eps={eps:g}"


def markdown_table(rows: list[dict], plan_times: bool = True) -> str:
    """The comparison as a Markdown table; columns no row has are left out, and the plan times
    unless ``plan_times`` (files leave them out: same inputs, same bytes)."""
    columns = [
        key
        for key in COLUMNS
        if (any(row.get(key) not in (None, "") for row in rows) or key == "solver")
        and (plan_times or key not in TIMED)
    ]
    lines = ["| " + " | ".join(COLUMNS[key] for key in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(key, row.get(key)) for key in columns) + " |" for row in rows]
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
    writer.writerows(comparison.rows)
    write_text(paths["csv"], buffer.getvalue())
    tolerances = {row["load_tolerance"] for row in comparison.rows} - {None}
    plot = frontier_png if len(tolerances) > 1 else devices_png
    write_bytes(paths["png"], plot(comparison.rows, comparison.title))
    if all("step_ms" in row for row in comparison.rows):
        paths["steps"] = out_dir / COMPARISON_FILES[-1]
        write_bytes(paths["steps"], steps_png(comparison.rows, comparison.title))
    return paths

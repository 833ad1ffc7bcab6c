"""``moeplace monitor``: is the served placement still right for the traffic it now serves?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich import box
from rich.table import Table

from moeplace.atomic import check_unique
from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.stats_io import load_trace_or_statistics, source_load
from moeplace.calibrate.trace import Trace
from moeplace.cli.app import user_errors
from moeplace.cli.console import named, out, print_json, printable
from moeplace.cli.options import LOAD_RATIO_UNIT, JsonOpt, bounded
from moeplace.cli.parsing import check_order
from moeplace.planner.placement import load_placement
from moeplace.validators.monitor import Watch, watch
from moeplace.validators.report import check_compatible


@user_errors
def monitor(
    placement_file: Annotated[Path, typer.Argument(help="The placement YAML being served.")],
    recent: Annotated[
        list[Path],
        typer.Argument(
            help="Recent traffic: traces and/or statistics files (load records after `moeplace import "
            "sglang-load` or `sglang-stat`). Each workload is judged on its own: every labelled workload of "
            "a load record, else each file (named by its stem; files of one stem sum)."
        ),
    ],
    max_load_ratio: Annotated[
        float | None,
        typer.Option(
            callback=bounded(1.0, None, LOAD_RATIO_UNIT),
            help="The limit on recent max/mean device load (mean over layers); default: what the "
            "calibration traffic reaches in records this size, + 0.05.",
        ),
    ] = None,
    as_json: JsonOpt = False,
):
    """Score a served placement on recent traffic and say what to do: keep it, re-plan it with few
    moves, or rebalance load; with several workloads, each on its own, and the worst decides.

    Exit codes: 0 keep; 1 re-plan or rebalance (a gate for a cron job); 2 bad input.
    """
    check_unique(recent)
    check_order("monitor", placement_file, list(recent))
    placement = load_placement(placement_file)
    workloads: dict[str, tuple[np.ndarray, list[Trace]]] = {}  # label -> (load [L, N], its traces)
    for path in recent:
        source = load_trace_or_statistics(path)
        with named(path):
            check_compatible(placement, source.meta)
        for label, load, trace in _workloads_of(path, source):
            before, traces = workloads.get(label, (0, []))
            workloads[label] = (before + load, traces + ([trace] if trace is not None else []))
    results = {}
    for label, (load, traces) in workloads.items():
        with named(placement_file):
            results[label] = watch(placement, load, traces, max_load_ratio)
    worst_label = max(results, key=lambda label: ACTIONS.index(results[label].action))
    worst = results[worst_label]
    if as_json:
        summary = (
            worst.summary()
            if len(results) == 1
            else {
                "action": worst.action,
                "verdict": worst.verdict,
                "workloads": {label: r.summary() for label, r in results.items()},
            }
        )
        print_json(summary | {"passed": worst.action == "keep"})
    elif len(results) == 1:
        _print_layers(worst)
    else:
        table = Table(title="max/mean device load per recent workload (mean over MoE layers)", box=box.SIMPLE)
        for column in ("workload", "calibration", "limit", "recent", "if rebalanced", "verdict"):
            table.add_column(column, justify="right", no_wrap=column != "verdict")
        for label, r in results.items():
            figures = (r.calibration.mean(), r.limit, r.recent.mean(), r.rebalanced.mean())
            table.add_row(printable(label), *(f"{x:.3f}" for x in figures), r.action)
        out.print(table)
        out.print(f"worst workload ({printable(worst_label)}): {worst.verdict}")
    if worst.action == "re-plan" and any(traces for _, traces in workloads.values()):
        out.print(
            f"next: moeplace plan RECENT_TRACE --from {placement_file} "
            f"--max-moves {max(placement.num_experts // 8, 1)} --out NEW.yaml"
        )
    raise typer.Exit(0 if worst.action == "keep" else 1)


ACTIONS = ("keep", "re-plan", "rebalance")  # mildest first: the worst workload's decides


def _workloads_of(path: Path, source: Trace | Statistics):
    """``(label, load [L, N], trace or None)`` of each workload an input holds: the labelled
    workloads of load records (``import sglang-load``), else the whole file, named by its stem."""
    if isinstance(source, Statistics) and source.workload_load is not None:
        for label, load in zip(source.workloads, source.workload_load, strict=True):
            yield label, load, None
        return
    yield path.stem, source_load(source), source if isinstance(source, Trace) else None


def _print_layers(result: Watch) -> None:
    """One workload's per-layer table and verdict."""
    table = Table(
        title="max/mean device load per MoE layer",
        caption="calibration: on the calibration traffic; noise: what calibration traffic would show in "
        "records as small as the recent ones (sampling alone); recent: on the recent traffic; if rebalanced: "
        "after a load rebalance of the recent traffic",
        box=box.SIMPLE,
    )
    for column in ("layer", "calibration", "noise", "recent", "if rebalanced"):
        table.add_column(column, justify="right", no_wrap=True)
    columns = result.calibration, result.expected, result.recent, result.rebalanced
    for layer, *figures in zip(result.layer_ids, *columns, strict=True):
        table.add_row(str(layer), *(f"{x:.3f}" for x in figures))
    out.print(table)
    out.print(result.verdict)

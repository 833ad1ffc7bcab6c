"""``moeplace monitor``: is the served placement still right for the traffic it now serves?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from moeplace.atomic import check_unique
from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.stats_io import load_trace_or_statistics, source_load
from moeplace.cli.app import LOAD_RATIO_UNIT, app, bounded, named, out, user_errors
from moeplace.planner.placement import load_placement
from moeplace.validators.monitor import watch
from moeplace.validators.report import check_compatible


@app.command()
@user_errors
def monitor(
    placement_file: Annotated[Path, typer.Argument(help="The placement YAML being served.")],
    recent: Annotated[
        list[Path],
        typer.Argument(
            help="Recent traffic: traces, and/or statistics files (load records such as SGLang stat dumps "
            "after `moeplace import sglang-stat`); their loads are summed."
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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
):
    """Score a served placement on recent traffic and say what to do: keep it, re-plan it with few
    moves, or rebalance load. Exits 0 to keep, 1 otherwise (a gate for a cron job)."""
    check_unique(recent)
    placement = load_placement(placement_file)
    load, traces = None, []
    for path in recent:
        source = load_trace_or_statistics(path)
        with named(path):
            check_compatible(placement, source.meta)
        part = source_load(source)
        load = part if load is None else load + part
        if not isinstance(source, Statistics):
            traces.append(source)
    with named(placement_file):
        result = watch(placement, load, traces, max_load_ratio)
    if as_json:
        print(json.dumps(result.summary() | {"passed": result.action == "keep"}))
    else:
        table = Table(title="max/mean device load per MoE layer", box=box.SIMPLE)
        for column in ("layer", "calibration", "this size", "recent", "if rebalanced"):
            table.add_column(column, justify="right", no_wrap=True)
        columns = result.calibration, result.expected, result.recent, result.rebalanced
        for layer, *figures in zip(result.layer_ids, *columns, strict=True):
            table.add_row(str(layer), *(f"{x:.3f}" for x in figures))
        out.print(table)
        out.print(result.verdict)
        if result.action == "re-plan" and traces:
            out.print(
                f"next: moeplace plan RECENT_TRACE --from {placement_file} "
                f"--max-moves {max(placement.num_experts // 8, 1)} --out NEW.yaml"
            )
    raise typer.Exit(0 if result.action == "keep" else 1)

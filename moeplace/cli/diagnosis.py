"""``moeplace diagnose``: does a trace's routing have locality worth exploiting, and which lever fits?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moeplace.atomic import check_distinct, check_output_dir, output_dir
from moeplace.calibrate.trace_io import load_trace
from moeplace.cli.app import user_errors
from moeplace.cli.console import named, out, print_json
from moeplace.cli.options import JsonOpt, SeedOpt, TraceArg
from moeplace.cli.parsing import parse_ints
from moeplace.cli.progress import progress_bar
from moeplace.validators.locality.diagnose import Settings, diagnose
from moeplace.validators.locality.report import REPORT_FILES, write_report


@user_errors
def diagnose_command(
    trace: TraceArg,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for report.md, report.json and the plots.")
    ] = Path("moeplace-diagnose"),
    groups: Annotated[int, typer.Option(min=1, help="Co-activation groups G for the clustering gain.")] = 8,
    budgets: Annotated[
        str | None, typer.Option(help="Prefetch budgets B, comma-separated (default: k, 2k, 3k, 4k).")
    ] = None,
    capacities: Annotated[
        str | None, typer.Option(help="Cache capacities C, comma-separated (default: k, 2k, 3k, 4k).")
    ] = None,
    segment_lengths: Annotated[
        str, typer.Option(help="Segment lengths for SRP and SCH, comma-separated.")
    ] = "1,2,4,8,16,32,64",
    sch_cache: Annotated[
        int, typer.Option(min=0, help="SCH cache size (default 0: 2k, about twice the active experts).")
    ] = 0,
    devices: Annotated[int, typer.Option(min=1, help="Devices D of the quick held-out static plan.")] = 8,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
):
    """Measure routing locality per layer and say which lever fits: static placement, a dynamic
    expert cache, or prefetch. Writes a Markdown + JSON report and plots."""
    check_distinct([trace], [out_dir / name for name in REPORT_FILES])
    check_output_dir(out_dir)
    data = load_trace(trace)
    settings = Settings(
        groups=groups,
        budgets=tuple(parse_ints(budgets, "--budgets")) if budgets else (),
        capacities=tuple(parse_ints(capacities, "--capacities")) if capacities else (),
        segment_lengths=tuple(parse_ints(segment_lengths, "--segment-lengths")),
        sch_cache=sch_cache,
        devices=devices,
        seed=seed,
    )
    with named(trace), progress_bar("diagnosing", data.num_layers) as advance:
        report = diagnose(data, settings, advance)
    with output_dir(out_dir):
        paths = write_report(report, out_dir)
    for text in report["overall"]["verdict"].values():
        out.print(f"- {text}")
    out.print("written: " + ", ".join(str(p) for p in paths.values()))
    if as_json:  # the report.json document, and where the files went
        print_json(report | {"files": {name: str(path) for name, path in paths.items()}})

"""Judging commands: validate, compare, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.text import Text

from moeplace.atomic import check_distinct, check_output_dir, output_dir
from moeplace.calibrate.split import split_by_label
from moeplace.calibrate.stats import DEFAULT_RESAMPLES, Statistics
from moeplace.calibrate.stats_io import load_trace_or_statistics, source_load
from moeplace.calibrate.trace_io import load_trace
from moeplace.cli.app import user_errors
from moeplace.cli.console import err, named, out, print_json, tagged
from moeplace.cli.options import (
    CORES,
    LOAD_RATIO_UNIT,
    AllowModelMismatchOpt,
    AllowOverlapOpt,
    ClusterOpt,
    HiddenOpt,
    HoldoutLabelOpt,
    HoldoutShareOpt,
    IntermediateOpt,
    JobsOpt,
    JsonOpt,
    Kernel,
    KernelOpt,
    MinSpeedupOpt,
    ModelConfigOpt,
    NodeCostOpt,
    NodesOpt,
    OverlapOpt,
    ProfileOpt,
    RefineOpt,
    RequestsPerRankOpt,
    ResampleByOpt,
    ResamplesOpt,
    ResampleUnit,
    SearchStepsOpt,
    SeedOpt,
    StepOpt,
    TimeLimitOpt,
    TokensPerRankOpt,
    ToleranceOpt,
    TraceArg,
    bounded,
    step_setting,
)
from moeplace.cli.parsing import check_order, parse_ints, parse_solvers, parse_tolerances
from moeplace.cli.planning import split_trace
from moeplace.cli.progress import progress_bar
from moeplace.cli.reports import print_balance, print_layers, print_steps, print_summary, print_warnings
from moeplace.cluster import executor_for
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement, load_placement
from moeplace.planner.solvers import BASELINE, DEFAULT_SOLVERS, SOLVERS, SolverOptions
from moeplace.planner.solvers.base import DEFAULT_LOAD_TOLERANCE
from moeplace.validators.balance import BalanceValidation, validate_balance
from moeplace.validators.compare import COMPARISON_FILES, markdown_table, step_gate_failures, write_comparison
from moeplace.validators.compare import compare as compare_solvers
from moeplace.validators.report import (
    StepSetting,
    Validation,
    check_compatible,
    compare_steps,
    gate_failures,
    step_gate_minimum,
)
from moeplace.validators.report import validate as validate_placement


@user_errors
def validate(
    placement_file: Annotated[Path, typer.Argument(help="Placement YAML from `moeplace plan`.")],
    holdout: Annotated[
        Path,
        typer.Argument(
            help="Held-out trace to score on, or load records (`moeplace import sglang-load`): then "
            "balance only, per workload, beside EPLB."
        ),
    ],
    fit: Annotated[
        Path | None,
        typer.Option(
            help="Refit the frequency baseline on this trace or statistics file instead of the "
            "calibration load recorded in the placement file."
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(
            help="Score only the held-out documents whose label matches these comma-separated shell "
            "patterns (one kind of traffic)."
        ),
    ] = None,
    as_json: JsonOpt = False,
    max_load_ratio: Annotated[
        float | None,
        typer.Option(
            callback=bounded(1.0, None, LOAD_RATIO_UNIT),
            help="Gate: fail if held-out max/mean device load (mean over layers) exceeds this ratio (1.15).",
        ),
    ] = None,
    min_reduction: Annotated[
        float | None,
        typer.Option(
            callback=bounded(
                -1.0, 1.0, f"a fraction of {BASELINE}'s devices per token between -1 and 1 (0.1 = 10%)"
            ),
            help=f"Gate: fail if the dev/token reduction vs {BASELINE} is below this fraction (0.1 = 10%).",
        ),
    ] = None,
    step: StepOpt = None,
    tokens_per_rank: TokensPerRankOpt = 1024,
    requests_per_rank: RequestsPerRankOpt = 32,
    kernel: KernelOpt = Kernel.rank,
    profile: ProfileOpt = "h800",
    overlap: OverlapOpt = True,
    min_speedup: MinSpeedupOpt = None,
    hidden: HiddenOpt = None,
    intermediate: IntermediateOpt = None,
    model_config: ModelConfigOpt = None,
    allow_overlap: AllowOverlapOpt = False,
    allow_model_mismatch: AllowModelMismatchOpt = False,
):
    """Score a placement on held-out traffic beside the frequency baseline; gate on the result.

    With --step, also the serving step it buys: a model of what each rank sends, receives and
    computes per step, and the time that takes on a hardware profile.

    Exit codes: 0 every gate passed; 1 a gate failed (each named on stderr); 2 bad input, a
    held-out set holding calibration documents or recorded from another model included.
    """
    if min_speedup is not None and step is None:
        raise MoeplaceError("--min-speedup needs --step prefill or decode")
    check_order("validate", placement_file, [holdout])
    placement = load_placement(placement_file)
    if max_load_ratio is not None and max_load_ratio > placement.num_devices:
        raise MoeplaceError(
            f"--max-load-ratio {max_load_ratio:g} can never fail: max/mean load is at most the "
            f"{placement.num_devices} devices (it is a ratio: 1.15 = 15% over the mean)"
        )
    baseline_load = None
    if fit is not None:
        fit_source = load_trace_or_statistics(fit)
        with named(fit):
            check_compatible(placement, fit_source.meta)
        baseline_load = source_load(fit_source)
    held = load_trace_or_statistics(holdout)
    allowed = {"allow_overlap": allow_overlap, "allow_model_mismatch": allow_model_mismatch}
    if isinstance(held, Statistics):
        unused = {"--label": label, "--min-reduction": min_reduction, "--step": step}
        validate_load_records(
            placement, held, holdout, baseline_load, unused, allowed, max_load_ratio, as_json
        )
        return
    if label is not None:
        with named(holdout):
            held = split_by_label(held, label, keep_all=True)[1]
    with named(holdout):
        validation = validate_placement(placement, held, baseline_load, **allowed)
    print_warnings(validation.evidence)
    setting = step_setting(
        held.meta, step, tokens_per_rank, requests_per_rank, kernel, profile, overlap,
        hidden, intermediate, model_config,
    )  # fmt: skip
    gates = (max_load_ratio, min_reduction, min_speedup)
    return validate_trace(validation, holdout, setting, gates, as_json)


def validate_trace(
    validation: Validation,
    holdout: Path,
    setting: StepSetting | None,
    gates: tuple[float | None, float | None, float | None],
    as_json: bool,
) -> None:
    """``validate`` on a held-out trace: the figures beside the baseline's, with a ``setting`` the
    serving step too, and the ``gates`` (``--max-load-ratio``, ``--min-reduction``,
    ``--min-speedup``; None: not gated); exit 1 if one fails."""
    max_load_ratio, min_reduction, min_speedup = gates
    summary = validation.summary()
    failures = gate_failures(validation, max_load_ratio, min_reduction)
    steps, note = None, ""
    if setting is not None:
        with named(holdout):
            steps = compare_steps(validation, setting)
        summary = summary | {"step": steps.summary()}
        failure = steps.verdict(min_speedup)
        failures += [failure] if failure else []
        note = (
            f"estimated step {steps.speedup_vs_best:+.1%} vs {steps.best_balancer}, the better balancer; "
            f"minimum {step_gate_minimum(min_speedup):+.1%}"
        )

    def tables() -> None:
        print_layers(validation)
        print_summary(validation)
        if steps is not None:
            print_steps(steps)

    conclude(summary, validation.layers(), failures, as_json, tables, note)


def validate_load_records(
    placement: Placement,
    held: Statistics,
    holdout: Path,
    baseline_load: np.ndarray | None,
    unused: dict[str, object],
    allowed: dict[str, bool],
    max_load_ratio: float | None,
    as_json: bool,
) -> None:
    """``validate`` on load records: balance only, per workload, beside EPLB; refusing the
    options in ``unused`` (flag: value) that need a per-token trace."""
    if not held.load_only:
        raise MoeplaceError(f"{holdout}: statistics of a trace; give the held-out trace itself")
    named_options = [name for name, value in unused.items() if value is not None]
    if named_options:
        raise MoeplaceError(
            f"{holdout} holds expert load only: {', '.join(named_options)} needs a per-token trace"
        )
    with named(holdout):
        balance = validate_balance(placement, held, baseline_load, **allowed)
    print_warnings(balance.evidence)
    _report_balance(balance, as_json, max_load_ratio)


def conclude(
    summary: dict, layers: list[dict], failures: list[str], as_json: bool, tables, note: str = ""
) -> None:
    """End ``validate``: one JSON object (the summary, verdict and per-layer figures) or ``tables()``
    and PASSED/FAILED (with ``note``: what the step gate read); each failed gate on stderr; exit 1
    if any failed."""
    if as_json:
        print_json(summary | {"passed": not failures, "failures": failures, "layers": layers})
    else:
        tables()
        verdict = Text("PASSED", "green") if not failures else Text("FAILED", "red")
        out.print(Text.assemble(verdict, f" ({note})" if note else ""))
    for failure in failures:
        err.print(tagged("gate failed:", "red", failure))
    if failures:
        raise typer.Exit(1)


def _report_balance(balance: BalanceValidation, as_json: bool, max_load_ratio: float | None) -> None:
    """Print a load-only validation (tables, or one JSON object) and exit 1 if the gate fails."""
    load = float(balance.workload_max_mean_load.mean())
    failures = []
    if max_load_ratio is not None and not load <= max_load_ratio:
        failures.append(f"held-out max/mean load {load:.4f} (mean over workloads) exceeds {max_load_ratio:g}")
    conclude(balance.summary(), balance.layers(), failures, as_json, lambda: print_balance(balance))


@user_errors
def compare(
    trace: TraceArg,
    out_dir: Annotated[
        Path,
        typer.Option("--out", help="Directory for comparison.md, .csv and .png (and steps.png with --step)."),
    ],
    devices: Annotated[str, typer.Option(help="Device counts, comma-separated.")] = "2,4,8",
    solvers: Annotated[
        str, typer.Option(help=f"Solvers, comma-separated (any of: {', '.join(SOLVERS)}).")
    ] = ",".join(DEFAULT_SOLVERS),
    holdout_share: HoldoutShareOpt = 0.5,
    holdout_label: HoldoutLabelOpt = None,
    seed: SeedOpt = 0,
    load_tolerance: Annotated[
        str,
        typer.Option(
            help="eps for the capped solvers; several, comma-separated (0,0.02,0.05,0.1,0.2), "
            "draw the balance frontier."
        ),
    ] = f"{DEFAULT_LOAD_TOLERANCE:g}",
    time_limit: TimeLimitOpt = 2.0,
    search_steps: SearchStepsOpt = 2000,
    refine: RefineOpt = False,
    nodes: NodesOpt = 1,
    node_cost: NodeCostOpt = 0.0,
    redundant_slots: Annotated[
        str,
        typer.Option(
            help="Redundant slots R for replicas, comma-separated (0,8: rows without and with 8 "
            "replicas; each a multiple of D). eplb places them by load, the others by co-activation.",
        ),
    ] = "0",
    resamples: ResamplesOpt = DEFAULT_RESAMPLES,
    resample_by: ResampleByOpt = ResampleUnit.documents,
    oracle: Annotated[
        bool,
        typer.Option(help="Also fit each solver on the held-out trace itself: search vs generalization."),
    ] = False,
    step: StepOpt = None,
    tokens_per_rank: TokensPerRankOpt = 1024,
    requests_per_rank: RequestsPerRankOpt = 32,
    kernel: KernelOpt = Kernel.rank,
    profile: ProfileOpt = "h800",
    overlap: OverlapOpt = True,
    hidden: HiddenOpt = None,
    intermediate: IntermediateOpt = None,
    model_config: ModelConfigOpt = None,
    min_speedup: MinSpeedupOpt = None,
    jobs: JobsOpt = CORES,
    cluster: ClusterOpt = None,
    as_json: JsonOpt = False,
):
    """Every solver at every device count (and load tolerance): fit on one split, score on the other.

    Exit codes: 0 done; 1 (with --step, after writing every file) a co-location solver's estimated
    step is slower than the better of frequency and eplb by more than --min-speedup allows; 2 bad
    input.
    """
    if min_speedup is not None and step is None:
        raise MoeplaceError("--min-speedup needs --step prefill or decode")
    check_distinct([trace], [out_dir / name for name in COMPARISON_FILES])
    check_output_dir(out_dir)
    device_counts, names = parse_ints(devices, "--devices"), parse_solvers(solvers)
    tolerances = parse_tolerances(load_tolerance)
    data = load_trace(trace)
    with named(trace):
        fit, held = split_trace(data, holdout_share, holdout_label, seed)
    steps = step_setting(
        fit.meta, step, tokens_per_rank, requests_per_rank, kernel, profile, overlap,
        hidden, intermediate, model_config,
    )  # fmt: skip
    options = SolverOptions(
        seed=seed, time_limit=time_limit, search_steps=search_steps, refine=refine, node_cost=node_cost
    )
    runs = sum(len(tolerances) if refine or SOLVERS[name].capped else 1 for name in names)
    total = len(device_counts) * runs * fit.num_layers * (2 if oracle else 1)
    with progress_bar("planning", total) as advance, executor_for(jobs, cluster) as pool:
        comparison = compare_solvers(
            fit,
            held,
            device_counts,
            names,
            tolerances,
            options,
            resamples,
            oracle,
            advance,
            pool,
            nodes,
            parse_ints(redundant_slots, "--redundant-slots"),
            steps,
            resample_by.value,
        )
    with output_dir(out_dir):
        paths = write_comparison(comparison, out_dir)
    out.print(comparison.title)
    out.print(markdown_table(comparison.rows))
    out.print("written: " + ", ".join(str(p) for p in paths.values()))
    failures = step_gate_failures(comparison.rows, min_speedup)
    if as_json:
        print_json(
            {
                "title": comparison.title,
                "rows": [row.record() for row in comparison.rows],
                "files": {name: str(path) for name, path in paths.items()},
                "passed": not failures,
                "failures": failures,
            }
        )
    for failure in failures:
        err.print(tagged("gate failed:", "red", failure))
    if failures:
        raise typer.Exit(1)


DEMO_TIME_LIMIT, DEMO_SEARCH_STEPS = 0.5, 200  # the demo's search budgets: a minute on 2 cores


@user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the demo's outputs.")] = Path(
        "moeplace-demo"
    ),
    load_tolerance: ToleranceOpt = DEFAULT_LOAD_TOLERANCE,
    time_limit: TimeLimitOpt = DEMO_TIME_LIMIT,
    search_steps: SearchStepsOpt = DEMO_SEARCH_STEPS,
    jobs: JobsOpt = CORES,
):
    """Run the whole job on a real trace shipped with moeplace (gpt-oss-20b decode routing).

    split -> plan (every solver, D = 2, 4, 8) -> validate on held-out documents -> compare. To
    finish in about a minute it searches less than plan does by default (--time-limit 0.5 s and
    --search-steps 200 a layer, against 2 s and 2000); the load tolerance is plan's.
    """
    from moeplace.demo import run_demo

    check_output_dir(out_dir)
    run_demo(out_dir, load_tolerance, time_limit, search_steps, jobs, out, progress_bar)

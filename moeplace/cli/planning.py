"""Planning commands: split, stats, plan (and re-plan with --from)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from moeplace.atomic import check_distinct, check_output_file
from moeplace.calibrate.split import split_by_label, split_documents
from moeplace.calibrate.stats import (
    DEFAULT_RESAMPLES,
    DEFAULT_SET_TOKENS,
    Statistics,
    load_skew,
)
from moeplace.calibrate.stats_io import as_statistics, load_trace_or_statistics, source_load
from moeplace.calibrate.trace import Trace
from moeplace.calibrate.trace_io import load_trace, save_trace
from moeplace.cli.app import user_errors
from moeplace.cli.console import err, named, out, print_json, printable, tagged
from moeplace.cli.options import (
    CORES,
    AllowModelMismatchOpt,
    AllowOverlapOpt,
    ClusterOpt,
    GroupMode,
    GroupModeOpt,
    GroupsOpt,
    GroupsPerTokenOpt,
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
    RedundantOpt,
    RefineOpt,
    RequestsPerRankOpt,
    ResampleByOpt,
    ResamplesOpt,
    ResampleUnit,
    SearchStepsOpt,
    SeedOpt,
    SetTokensOpt,
    SolverName,
    StepOpt,
    TimeLimitOpt,
    TokensPerRankOpt,
    TraceArg,
    step_setting,
    with_groups,
)
from moeplace.cli.parsing import parse_tolerance
from moeplace.cli.progress import progress_bar
from moeplace.cli.reports import print_balance, print_steps, print_summary, print_warnings
from moeplace.cluster import executor_for
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement, load_placement, save_placement
from moeplace.planner.plan import FitFigures, calibration_fit
from moeplace.planner.plan import plan as plan_layers
from moeplace.planner.replan import moves_of, replan
from moeplace.planner.replan_slots import replan_slots
from moeplace.planner.solvers import SOLVERS, SolverOptions
from moeplace.planner.solvers.base import DEFAULT_LOAD_TOLERANCE
from moeplace.planner.solvers.caps import was_relaxed
from moeplace.planner.topology import Topology
from moeplace.validators.balance import validate_balance
from moeplace.validators.choose import (
    AUTO_GROUP_MODES,
    AUTO_TOLERANCES,
    BALANCERS,
    SERVED,
    Choice,
    choose_group_mode,
    choose_tolerance,
    fitted_steps,
    group_mode_verdict,
    plan_balancers,
)
from moeplace.validators.evidence import check_held_out
from moeplace.validators.report import StepSetting, check_compatible, compare_steps
from moeplace.validators.report import validate as validate_placement
from moeplace.validators.step_search import search_record, step_search

StatsInputArg = Annotated[
    Path,
    typer.Argument(
        help="Calibration trace (directory or .npz) or a statistics file from `moeplace merge`/`import`."
    ),
]


def parse_weights(text: str) -> dict[str, float]:
    """``LABEL=WEIGHT,...`` as a dict; ``MoeplaceError`` for anything else."""
    weights = {}
    for item in text.split(","):
        label, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not label.strip() or not weight >= 0 or weight == float("inf"):
            raise MoeplaceError(f"--workload-weights: {item!r} is not LABEL=WEIGHT with a weight >= 0")
        weights[label.strip()] = weight
    if not sum(weights.values()) > 0:
        raise MoeplaceError("--workload-weights: every weight is 0")
    return weights


def split_trace(data: Trace, share: float, labels: str | None, seed: int) -> tuple[Trace, Trace]:
    """By label when ``labels`` are given (the share is then unused), else a seeded random share."""
    return split_by_label(data, labels) if labels else split_documents(data, share, seed)


@user_errors
def split(
    trace: TraceArg,
    fit_out: Annotated[Path, typer.Option(help="Where to write the fit (calibration) documents.")],
    holdout_out: Annotated[Path, typer.Option(help="Where to write the held-out documents.")],
    holdout_share: HoldoutShareOpt = 0.5,
    holdout_label: HoldoutLabelOpt = None,
    seed: SeedOpt = 0,
):
    """Split a trace by whole documents into fit and held-out traces (seeded, reproducible), or
    with --holdout-label by kind of traffic.

    An output named *.npz is written in the interchange format, any other name as a trace directory.
    """
    check_distinct([trace], [fit_out, holdout_out])
    data = load_trace(trace)
    with named(trace):
        fit, held = split_trace(data, holdout_share, holdout_label, seed)
    save_trace(fit, fit_out)
    save_trace(held, holdout_out)
    out.print(f"fit: {fit.num_documents} documents, {fit.num_tokens} tokens -> {fit_out}")
    out.print(f"held-out: {held.num_documents} documents, {held.num_tokens} tokens -> {holdout_out}")


@user_errors
def stats(trace: StatsInputArg, as_json: JsonOpt = False):
    """Describe a trace or statistics file: size, model, and each MoE layer's expert-load skew."""
    data = load_trace_or_statistics(trace)
    meta = data.meta
    load = source_load(data)
    if as_json:
        print_json(
            {
                "path": str(trace),
                "meta": meta.to_dict(),
                "tokens": data.num_tokens,
                "documents": data.num_documents,
                "load_only": isinstance(data, Statistics) and data.load_only,
                "workloads": list(getattr(data, "workloads", ())),
                "layers": [
                    {"layer": layer_id, **dataclasses.asdict(load_skew(layer_load))}
                    for layer_id, layer_load in zip(meta.layer_ids, load, strict=True)
                ],
            }
        )
        return
    header = printable(f"  model {meta.model}  phase {meta.phase}")
    out.print(Text.assemble((printable(str(trace)), "bold"), header))
    out.print(
        f"tokens {data.num_tokens}  documents {data.num_documents}  MoE layers {len(meta.layer_ids)}  "
        f"experts {meta.num_experts}  top-k {meta.top_k}"
        + ("  (statistics, expert load only)" if isinstance(data, Statistics) and data.load_only else "")
    )
    if meta.source:
        out.print(f"source: {meta.source}  licence: {meta.license or 'unknown'}")
    table = Table(title="expert load per MoE layer")
    for column in ("layer", "max/mean", "max/min", "Gini", "top-10% share", "dead experts"):
        table.add_column(column, justify="right")
    for layer_id, layer_load in zip(meta.layer_ids, load, strict=True):
        s = load_skew(layer_load)
        table.add_row(
            str(layer_id),
            f"{s.max_mean:.2f}",
            f"{s.max_min:.1f}",
            f"{s.gini:.3f}",
            f"{s.top_decile_share:.1%}",
            str(s.dead),
        )
    out.print(table)


@user_errors
def plan(
    trace: StatsInputArg,
    out_path: Annotated[Path, typer.Option("--out", help="Placement YAML to write.")],
    devices: Annotated[
        int | None, typer.Option(help="Number of expert-parallel devices D (required unless --from).")
    ] = None,
    solver: Annotated[
        SolverName | None,
        typer.Option(
            metavar="<solver>",  # the names are the help's, each with what it does
            help="Default: robust for load-only statistics, else greedy-capped. "
            + "; ".join(f"{name}: {spec.summary}" for name, spec in SOLVERS.items())
            + ".",
            show_default=False,
        ),
    ] = None,
    workload_weights: Annotated[
        str | None,
        typer.Option(
            help="robust: the weight of each workload of the load records, LABEL=WEIGHT comma-separated "
            "(decode_a=2,prefill_b=1; workloads not named weigh 0). Default: equal weights."
        ),
    ] = None,
    load_tolerance: Annotated[
        str,
        typer.Option(
            help="eps, a fraction (0.1 = 10%): capped solvers keep every device's load <= (1 + eps) x mean "
            "load. auto (with --step): the eps of the balance frontier, or frequency, whose serving step "
            "replayed on the calibration trace is cheapest.",
        ),
    ] = f"{DEFAULT_LOAD_TOLERANCE:g}",
    seed: SeedOpt = 0,
    time_limit: TimeLimitOpt = 2.0,
    search_steps: SearchStepsOpt = 2000,
    refine: RefineOpt = False,
    nodes: NodesOpt = 1,
    node_cost: NodeCostOpt = 0.0,
    group_mode: GroupModeOpt = GroupMode.nodes,
    groups: GroupsOpt = None,
    groups_per_token: GroupsPerTokenOpt = None,
    redundant_slots: RedundantOpt = 0,
    resamples: ResamplesOpt = DEFAULT_RESAMPLES,
    resample_by: ResampleByOpt = ResampleUnit.documents,
    set_tokens: SetTokensOpt = DEFAULT_SET_TOKENS,
    holdout: Annotated[
        Path | None,
        typer.Option(
            help="Held-out trace, or load records of other workloads: score the placement on it and "
            "record the figures in the file."
        ),
    ] = None,
    step: StepOpt = None,
    tokens_per_rank: TokensPerRankOpt = 1024,
    requests_per_rank: RequestsPerRankOpt = 32,
    kernel: KernelOpt = Kernel.rank,
    profile: ProfileOpt = "h800",
    overlap: OverlapOpt = True,
    hidden: HiddenOpt = None,
    intermediate: IntermediateOpt = None,
    model_config: ModelConfigOpt = None,
    step_search_swaps: Annotated[
        int,
        typer.Option(
            "--step-search",
            min=0,
            max=1_000_000,
            help="With --step: after planning, try this many swaps of two experts a layer against the "
            "serving step estimated on steps sampled from the calibration trace, keeping those that "
            "shorten it (0: off). It ignores the load cap: the step prices imbalance step by step.",
        ),
    ] = 0,
    from_placement: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Re-plan this served placement on the new traffic TRACE instead of planning from scratch, "
            "moving at most --max-moves experts a layer; also plans --solver from scratch to say how much of "
            "its gain the moves recover.",
        ),
    ] = None,
    max_moves: Annotated[
        int | None,
        typer.Option(
            min=0, max=1 << 20, help="With --from: experts a layer may move (each a weight transfer)."
        ),
    ] = None,
    jobs: JobsOpt = CORES,
    cluster: ClusterOpt = None,
    min_speedup: MinSpeedupOpt = None,
    allow_overlap: AllowOverlapOpt = False,
    allow_model_mismatch: AllowModelMismatchOpt = False,
    as_json: JsonOpt = False,
):
    """Solve a placement for every MoE layer and write the placement YAML (or, with --from, re-plan
    a served placement with few moves).

    Exit codes: 0 written; 1 written, but with --holdout and --step the estimated step is slower
    than the better load balancer's by more than --min-speedup allows; 2 bad input (nothing
    written), a --holdout holding calibration documents or of another model included.
    """
    if (from_placement is None) != (max_moves is None):
        raise MoeplaceError("--from and --max-moves go together: the placement served and the moves allowed")
    current = load_placement(from_placement) if from_placement is not None else None
    if current is not None:
        devices, nodes, redundant_slots, group_mode = served_layout(
            current, devices, nodes, redundant_slots, step_search_swaps
        )
    if devices is None:
        raise MoeplaceError("--devices is required (or --from a placement)")
    auto = load_tolerance == "auto"
    tolerance = 0.0 if auto else parse_tolerance(load_tolerance)
    check_plan_flags(
        auto, group_mode, current, step, holdout, min_speedup, step_search_swaps, redundant_slots
    )
    check_distinct([trace, holdout], [out_path])
    check_output_file(out_path)
    auto_groups = group_mode == GroupMode.auto
    source, held = read_plan_inputs(trace, holdout, groups, groups_per_token, auto, step_search_swaps)
    check_plan_inputs(trace, holdout, source, held, auto_groups, nodes, step)
    topology = Topology(source.meta.num_experts, devices, nodes, redundant_slots)  # bad counts: before work
    options = SolverOptions(
        load_tolerance=tolerance,
        seed=seed,
        time_limit=time_limit,
        search_steps=search_steps,
        refine=refine,
        node_cost=node_cost,
        group_mode=AUTO_GROUP_MODES[0] if auto_groups else group_mode.value,  # auto: each in turn
    )
    statistics = as_statistics(  # statistics as they were made (their own seed and resamples)
        source, resamples=resamples, seed=seed, resample_by=resample_by.value, set_tokens=set_tokens
    )
    if held is not None:  # before planning: refused evidence should not cost a plan first
        with named(holdout):
            check_held_out(
                [statistics.evidence()], source.meta.model, held, allow_overlap, allow_model_mismatch
            )
    if workload_weights is not None:
        weights = parse_weights(workload_weights)  # a bad flag value is the flag's, not the file's
        with named(trace):
            statistics = statistics.with_weights(weights)
    setting = step_setting(
        source.meta, step, tokens_per_rank, requests_per_rank, kernel, profile, overlap,
        hidden, intermediate, model_config,
    )  # fmt: skip
    job = PlanJob(
        trace,
        source,
        statistics,
        topology,
        solver.value if solver is not None else "robust" if statistics.load_only else "greedy-capped",
        options,
        setting,
        seed,
        jobs,
        cluster,
    )
    if current is not None:
        placement = replan_served(job, current, max_moves, auto)
    elif auto:
        placement = plan_auto_tolerance(job)
    elif auto_groups:
        placement = plan_auto_groups(job)
    else:
        placement = plan_fixed(job)
    note_relaxed_caps(placement)
    fit = print_fit(placement, statistics)
    if step_search_swaps:
        placement = search_steps_of(job, placement, step_search_swaps)
    placement, step_failure = score_on_holdout(
        placement, held, holdout, setting, min_speedup, allow_overlap, allow_model_mismatch
    )
    write_plan(placement, out_path, fit, step_failure, as_json)


def write_plan(
    placement: Placement, out_path: Path, fit: FitFigures | None, step_failure: str | None, as_json: bool
) -> None:
    """Write ``placement``, say where (or print the JSON object), and exit 1 if the step gate
    failed: the file is written, recording the figures, but the step is slower."""
    save_placement(placement, out_path)
    layers = len(placement.layers)
    out.print(f"placement ({placement.solver}, D={placement.num_devices}, {layers} layers) -> {out_path}")
    if as_json:
        print_json(
            {
                "placement": str(out_path),
                "solver": placement.solver,
                "devices": placement.num_devices,
                "layers": layers,
                "options": placement.options,
                "fit": {} if fit is None else fit.report(),
                "validation": placement.validation,
                "passed": step_failure is None,
                "failures": [step_failure] if step_failure else [],
            }
        )
    if step_failure:  # written (the file records the figures) but gated: the step is slower
        err.print(tagged("gate failed:", "red", step_failure))
        raise typer.Exit(1)


def served_layout(
    current: Placement, devices: int | None, nodes: int, redundant_slots: int, step_search_swaps: int
) -> tuple[int, int, int, GroupMode]:
    """``--from``: the devices, nodes, redundant slots and group mode of the served placement,
    refusing options that contradict them."""
    if step_search_swaps or redundant_slots:
        raise MoeplaceError(
            "--from re-plans by moves alone, on the placement's slots: drop --step-search and "
            "--redundant-slots"
        )
    if devices not in (None, current.num_devices) or nodes not in (1, current.num_nodes):
        raise MoeplaceError(
            f"--from: the placement has {current.num_devices} devices in {current.num_nodes} nodes"
        )
    group_mode = GroupMode(current.options.get("group_mode", "free"))  # from scratch: the same mode
    return current.num_devices, current.num_nodes, current.redundant_slots, group_mode


def check_plan_flags(
    auto: bool,
    group_mode: GroupMode,
    current: Placement | None,
    step,
    holdout: Path | None,
    min_speedup: float | None,
    step_search_swaps: int,
    redundant_slots: int,
) -> None:
    """Refuse ``plan`` options that do not go together, before any input is read."""
    if min_speedup is not None and (step is None or holdout is None):
        raise MoeplaceError("--min-speedup gates the step on --holdout: it needs --holdout and --step")
    if auto and step is None:
        raise MoeplaceError("--load-tolerance auto needs --step prefill or decode: the step it minimizes")
    if step_search_swaps and step is None:
        raise MoeplaceError("--step-search needs --step prefill or decode: the step it shortens")
    if step_search_swaps and redundant_slots:
        raise MoeplaceError("--step-search places one copy of each expert: drop --redundant-slots")
    if group_mode == GroupMode.auto and (step is None or auto or current is not None):
        raise MoeplaceError(
            "--group-mode auto needs --step prefill or decode (the step it prices), and plans from scratch "
            "at one load tolerance: drop --from and --load-tolerance auto"
        )


def read_plan_inputs(
    trace: Path,
    holdout: Path | None,
    groups: int | None,
    groups_per_token: int | None,
    auto: bool,
    step_search_swaps: int,
) -> tuple[Trace | Statistics, Trace | Statistics | None]:
    """The calibration input and the held-out one (None without ``--holdout``), routing groups set."""
    with named(trace):
        source = with_groups(load_trace_or_statistics(trace), groups, groups_per_token)
    if (auto or step_search_swaps) and isinstance(source, Statistics):
        option = "--load-tolerance auto" if auto else "--step-search"
        raise MoeplaceError(f"{trace}: {option} replays the calibration trace; give the trace")
    if holdout is None:
        return source, None
    return source, with_groups(load_trace_or_statistics(holdout), groups, groups_per_token)


def check_plan_inputs(
    trace: Path,
    holdout: Path | None,
    source: Trace | Statistics,
    held: Trace | Statistics | None,
    auto_groups: bool,
    nodes: int,
    step,
) -> None:
    """Refuse inputs the options cannot use: auto group mode without groups, nodes or a trace;
    held-out statistics of a trace, or load records with ``--step``."""
    if auto_groups and (source.meta.group_limit is None or nodes < 2):
        raise MoeplaceError(
            f"{trace}: --group-mode auto weighs keeping routing groups on nodes: it needs routing groups "
            "(the input's, or --groups and --groups-per-token) and --nodes 2 or more"
        )
    if auto_groups and isinstance(source, Statistics) and not source.load_only:
        raise MoeplaceError(f"{trace}: --group-mode auto replays the calibration trace; give the trace")
    if isinstance(held, Statistics) and (not held.load_only or step):
        raise MoeplaceError(f"{holdout}: --holdout takes a trace, or load records without --step")


@dataclasses.dataclass(frozen=True)
class PlanJob:
    """What every mode of ``plan`` works from: the calibration input (``source``) and its
    statistics, the topology, solver, options and step setting (None without ``--step``), and
    where layers run (``--jobs``, ``--cluster``)."""

    trace: Path
    source: Trace | Statistics
    statistics: Statistics
    topology: Topology
    solver: str
    options: SolverOptions
    setting: StepSetting | None
    seed: int
    jobs: int
    cluster: str | None

    @property
    def label(self) -> str:
        return f"{self.solver}, D={self.topology.num_devices}"

    @functools.cached_property
    def provenance(self) -> dict:
        """The calibration input's provenance (a trace's fingerprint hashes all of it): once a run."""
        return self.source.provenance()

    @contextlib.contextmanager
    def planning(self, label: str, runs: int = 1):
        """Yield ``plan_at(solver, options)``, which plans the calibration statistics on the pool
        of ``--jobs`` / ``--cluster`` (also yielded) with one progress bar of ``runs`` whole-model
        plans, errors named by the calibration input."""
        layers = runs * self.statistics.num_layers
        with (
            named(self.trace),
            progress_bar(label, layers) as advance,
            executor_for(self.jobs, self.cluster) as pool,
        ):

            def plan_at(solver: str, options: SolverOptions) -> Placement:
                return plan_layers(
                    self.statistics, self.topology, solver, options, self.provenance, advance, pool
                )

            yield plan_at, pool


def plan_fixed(job: PlanJob) -> Placement:
    """``plan``: the solver at the one load tolerance given."""
    with job.planning(job.label) as (plan_at, _):
        return plan_at(job.solver, job.options)


def plan_auto_tolerance(job: PlanJob) -> Placement:
    """``--load-tolerance auto``: the balancers and the solver over a grid of tolerances; the
    cheapest step replayed on the calibration trace wins."""
    runs = len(BALANCERS) + len(AUTO_TOLERANCES)
    with job.planning(f"{job.label}, eps auto", runs) as (plan_at, _):
        balancers = plan_balancers(plan_at, job.options)
        solver_at = functools.partial(plan_at, job.solver)
        choice = choose_tolerance(job.source, job.topology, job.setting, solver_at, job.options, balancers)
    print_choice(choice, job.setting, "load tolerance auto")
    return with_choice(choice, job.solver, job.setting)


def plan_auto_groups(job: PlanJob) -> Placement:
    """``--group-mode auto``: the solver with routing groups kept on nodes and free; the cheaper
    step wins (load records: on routing fitted to their load)."""
    replayed, routing = steps_to_replay(job.source, job.setting, job.topology, job.seed)
    with job.planning(f"{job.label}, group mode auto", len(AUTO_GROUP_MODES)) as (plan_at, _):
        solver_at = functools.partial(plan_at, job.solver)
        choice = choose_group_mode(replayed, job.topology, job.setting, solver_at, job.options)
    whole = "whole " if job.setting.shape.whole else ""
    out.print(
        f"group mode auto: estimated {whole}step on {routing} (ms, a model): "
        + ", ".join(
            f"{mode} {time.total(job.setting.overlap) * 1e3:.3f} (communication "
            f"{time.communication * 1e3:.3f}, compute {time.compute * 1e3:.3f}, "
            f"the rest {time.rest * 1e3:.3f})"
            for mode, time in choice.times.items()
        )
    )
    out.print(f"chose {group_mode_verdict(choice)}")
    return with_group_choice(choice, job.setting, routing)


def replan_served(job: PlanJob, current: Placement, max_moves: int, auto: bool) -> Placement:
    """``--from``: move at most ``max_moves`` experts (or slots) a layer of the served placement
    for the new traffic; also plan the solver from scratch, to say how much of its gain the moves
    recover. With ``auto``, both at the tolerance whose step is cheapest (the re-plan against
    keeping the served placement)."""
    statistics, setting, options = job.statistics, job.setting, job.options
    with named(job.trace):
        check_compatible(current, statistics.meta)
    runs = len(BALANCERS) + len(AUTO_TOLERANCES) if auto else 1
    # replicas, groups on nodes or load records: moves of slots, for balance; else of experts
    slot_moves = statistics.load_only or current.redundant_slots > 0 or current.groups_on_nodes > 1
    with job.planning(f"{job.solver} from scratch, D={job.topology.num_devices}", runs) as (plan_at, pool):

        def replan_at(options: SolverOptions) -> Placement:
            if slot_moves:
                return replan_slots(statistics, current, max_moves, job.provenance, pool)
            return replan(statistics, current, max_moves, options, job.provenance, pool)

        if auto:
            solver_at = functools.partial(plan_at, job.solver)
            balancers = plan_balancers(plan_at, options)
            full = choose_tolerance(
                job.source, job.topology, setting, solver_at, options, balancers
            ).placement
            choice = choose_tolerance(
                job.source, job.topology, setting, replan_at, options, {SERVED: current}
            )
            placement = with_choice(choice, job.solver, setting)
        else:
            full = plan_at(job.solver, options)
            placement = replan_at(options)
    if auto:
        print_choice(choice, setting, "re-plan")
    traffic = job.source if isinstance(job.source, Trace) else statistics
    print_replan(current, placement, full, traffic, setting)
    return placement


def note_relaxed_caps(placement: Placement) -> None:
    """A note on stderr naming the layers whose load cap rose to what frequency packing reaches."""
    relaxed = [layer.layer_id for layer in placement.layers if was_relaxed(layer.solver_report)]
    if relaxed:
        err.print(
            tagged(
                "note:",
                "yellow",
                f"layers {relaxed}: no equal-count placement meets (1 + eps) x mean load; their cap is "
                "what frequency-balanced packing reaches (see solver_report.load_cap)",
            )
        )


def print_fit(placement: Placement, statistics: Statistics) -> FitFigures | None:
    """Print the calibration fit of ``placement`` (means over layers) and return it (None when
    the statistics have no top-k sets)."""
    fit = calibration_fit(placement)
    if fit is not None:
        out.print(
            f"calibration (mean over layers): dev/token {fit.dev_per_token:.3f}, best lower bound "
            f"{fit.lower_bound_dev_per_token:.3f} (bound gap {fit.bound_gap:.1%}; per layer in "
            "solver_report)"
            + (
                f"; top-k sets sampled at rate {statistics.set_sample_rate:.3g} (load, co-activation: all)"
                if statistics.set_sample_rate < 1
                else ""
            )
        )
    return fit


def search_steps_of(job: PlanJob, placement: Placement, swaps: int) -> Placement:
    """``--step-search``: ``placement`` after up to ``swaps`` swaps a layer that shorten the step
    estimated on steps sampled from the calibration trace."""
    with (
        named(job.trace),
        progress_bar(f"step search, {swaps} swaps a layer", job.statistics.num_layers) as advance,
        executor_for(job.jobs, job.cluster) as pool,
    ):
        placement = step_search(
            placement, job.source, job.setting, swaps, seed=job.seed, executor=pool, on_layer=advance
        )
    record = search_record(placement)
    out.print(
        f"step search on {record.steps} steps sampled from the calibration trace (a model): estimated "
        f"step {record.seconds_before * 1e3:.3f} -> {record.seconds_after * 1e3:.3f} ms"
    )
    return placement


def score_on_holdout(
    placement: Placement,
    held: Trace | Statistics | None,
    holdout: Path | None,
    setting: StepSetting | None,
    min_speedup: float | None,
    allow_overlap: bool,
    allow_model_mismatch: bool,
) -> tuple[Placement, str | None]:
    """``--holdout``: ``placement`` with its held-out figures recorded (and printed), and the step
    gate's failure, if any (None: passed, or no step)."""
    if held is None:
        return placement, None
    allowed = {"allow_overlap": allow_overlap, "allow_model_mismatch": allow_model_mismatch}
    if isinstance(held, Statistics):  # load records: balance on each held-out workload
        with named(holdout):
            balance = validate_balance(placement, held, **allowed)
        print_warnings(balance.evidence)
        print_balance(balance)
        return dataclasses.replace(placement, validation=balance.summary()), None
    with named(holdout):
        validation = validate_placement(placement, held, **allowed)
        summary = validation.summary()
        steps = None if setting is None else compare_steps(validation, setting)
    print_warnings(validation.evidence)
    if steps is not None:
        summary = summary | {"step": steps.summary()}
    print_summary(validation)
    if steps is None:
        return dataclasses.replace(placement, validation=summary), None
    print_steps(steps)
    return dataclasses.replace(placement, validation=summary), steps.verdict(min_speedup)


def with_choice(choice: Choice, solver: str, setting: StepSetting) -> Placement:
    """The chosen placement, recording in its options what ``--load-tolerance auto`` chose and why."""
    auto = {
        "chose": choice.name,
        "tolerance": choice.tolerance,
        "solver": solver,
        "step": setting.summary(),
        "step_seconds": choice.estimates,
    }
    return dataclasses.replace(
        choice.placement, options=choice.placement.options | {"load_tolerance_auto": auto}
    )


def steps_to_replay(
    source: Trace | Statistics, setting: StepSetting, topology: Topology, seed: int
) -> tuple[Trace, str]:
    """The trace whose steps price the group modes, and what it is: the calibration trace, or for
    load records routing fitted to their pooled load, whole steps of every rank."""
    if isinstance(source, Trace):
        return source, "the calibration trace"
    fitted = fitted_steps(source, setting, topology.num_devices, seed)
    return fitted.trace, (
        f"synthetic routing fitted to the recorded load ({fitted.trace.num_documents} requests; expert "
        f"shares within {fitted.distance.max():.1%} per layer; layers independent, no co-activation)"
    )


def with_group_choice(choice: Choice, setting: StepSetting, routing: str) -> Placement:
    """The chosen placement, recording what ``--group-mode auto`` chose, on what, and why."""
    auto = {
        "chose": choice.name,
        "step": setting.summary(),
        "step_seconds": choice.estimates,
        "replayed": routing,
    }
    return dataclasses.replace(choice.placement, options=choice.placement.options | {"group_mode_auto": auto})


def print_choice(choice: Choice, setting: StepSetting, what: str) -> None:
    out.print(
        f"{what}: estimated step on the calibration trace (ms, a model): "
        + ", ".join(f"{name} {value * 1e3:.3f}" for name, value in choice.estimates.items())
    )
    out.print(f"chose {choice.verdict(setting.workload.kernel)}")


def print_replan(
    current: Placement,
    replanned: Placement,
    full: Placement,
    trace: Trace | Statistics | None,
    setting: StepSetting | None,
) -> None:
    """Moves made, and how much of a from-scratch plan's gain they recover on the new traffic (and
    of its serving step, estimated on it, with a step setting)."""
    moves = moves_of(replanned)
    if moves.unit == "slot":
        pairs = zip(current.physical_to_logical, full.physical_to_logical, strict=True)
    else:
        pairs = zip(current.expert_to_device, full.expert_to_device, strict=True)
    full_moves = sum(int((a != b).sum()) for a, b in pairs)
    out.print(
        f"re-plan from {current.solver}: {sum(moves.per_layer)} {moves.unit} moves ({max(moves.per_layer)} "
        f"at most in a layer, budget {moves.budget}); {full.solver} from scratch moves {full_moves}"
    )
    if isinstance(trace, Statistics):  # load records: balance on each of their workloads
        plans = {"served": current, "re-plan": replanned, full.solver: full}
        figures = [  # the new records are the re-plan's calibration: in-sample by design
            float(validate_balance(p, trace, allow_overlap=True).max_mean_load.mean()) for p in plans.values()
        ]
        for name, figure in zip(plans, figures, strict=True):
            out.print(f"  on the new load records, {name}: max/mean {figure:.3f} (mean over workloads)")
        out.print(f"  the moves recover {_recovered(*figures, f'{full.solver} from scratch', 'balance')}")
        return
    if trace is None:
        return
    plans = {"served": current, "re-plan": replanned, full.solver: full}
    figures = {  # the new traffic is the re-plan's calibration: in-sample by design
        name: validate_placement(p, trace, allow_overlap=True).score.headline for name, p in plans.items()
    }
    for name, h in figures.items():
        out.print(
            f"  on the new traffic, {name}: dev/token {h.dev_per_token:.3f}, max/mean {h.max_mean_load:.3f}"
        )
    served, moved, scratch = figures.values()
    scratch_name = f"{full.solver} from scratch"
    spread = _recovered(
        served.dev_per_token, moved.dev_per_token, scratch.dev_per_token, scratch_name, "dev/token"
    )
    balance = _recovered(
        served.max_mean_load, moved.max_mean_load, scratch.max_mean_load, scratch_name, "balance"
    )
    out.print(f"  the moves recover {spread}, and {balance}")
    if setting is not None:
        steps = [
            setting.replay(p.physical_to_logical, trace, p.topology)[1].total(setting.overlap)
            for p in plans.values()
        ]
        out.print(
            "  estimated step on the new traffic (ms, a model): "
            + ", ".join(f"{name} {t * 1e3:.3f}" for name, t in zip(plans, steps, strict=True))
            + f"; the moves recover {_recovered(*steps, f'{full.solver} from scratch', 'step')}"
        )


def _recovered(before: float, after: float, target: float, reference: str, figure: str) -> str:
    """What share of ``reference``'s gain in ``figure`` (``before`` to ``target``, lower is
    better) the moves (``after``) make, as the end of a sentence."""
    if not target < before:
        return f"nothing of {reference}'s {figure}: it gains none over the served placement"
    return f"{(before - after) / (before - target):.0%} of {reference}'s {figure} gain"

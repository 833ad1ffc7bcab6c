"""The ``moeplace`` Typer app and what its commands share: errors, progress, options, parsing.

Exit codes: 0 success, 1 a validation gate failed, 2 bad input (one line on stderr naming the
file and the problem).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from moeplace import __version__
from moeplace.calibrate.stats import RESAMPLE_UNITS
from moeplace.errors import MoeplaceError, did_you_mean, file_error, raw_message
from moeplace.planner.groups import GROUP_MODES
from moeplace.planner.placement import yaml_safe
from moeplace.planner.solvers import SOLVERS
from moeplace.validators.profile import ModelShape, load_profile, read_model_shape, shape_of
from moeplace.validators.report import MIN_STEP_SPEEDUP, StepSetting
from moeplace.validators.step import KERNELS, Workload

app = typer.Typer(
    help="Plan expert placement for sharded MoE inference: fewer devices per token, balanced load.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: paragraphs reflow to the terminal, flags read as --x / --no-x
)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"moeplace {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    pass  # the app's own options; its help text is the Typer's


class _Console(Console):
    """A console for user text (paths, model names, labels): no markup, no emoji codes, and
    control characters in strings escaped (line breaks of multi-line text kept) so a file cannot
    drive the terminal. One-line messages go through ``tagged``, which escapes line breaks too."""

    def print(self, *objects, **kwargs):
        def clean(text: str) -> str:
            return "\n".join(printable(line) for line in text.split("\n"))

        super().print(*(clean(o) if isinstance(o, str) else o for o in objects), **kwargs)


out = _Console(soft_wrap=True, markup=False, highlight=False, emoji=False)
err = _Console(stderr=True, soft_wrap=True, markup=False, highlight=False, emoji=False)


def tagged(tag: str, style: str, message: str) -> Text:
    """``tag`` in ``style``, then the message (control characters escaped)."""
    return Text.assemble((tag, style), " ", printable(message))


CORES = os.cpu_count() or 1


def bounded(low: float | None, high: float | None, unit: str):
    """A Typer callback: the option must be a finite number within [low, high]; the usage error
    says the unit (so ``--load-tolerance 10``, meant as 10%, is refused saying it is a fraction)."""

    def check(value):
        if value is None:
            return value
        if (
            not math.isfinite(value)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise typer.BadParameter(f"{unit}; got {value:g}")
        return value

    return check


def choices(name: str, values) -> type[enum.Enum]:
    """A string enum of ``values``, for typer to validate an option or argument against."""
    return enum.Enum(name, {value: value for value in values}, type=str)


LOAD_RATIO_UNIT = "a ratio of the busiest device's load to the mean, >= 1 (1.15 = 15% over)"
TOLERANCE_UNIT = "eps is a fraction of the mean device load between 0 and 1 (0.1 = 10%)"

TraceArg = Annotated[
    Path, typer.Argument(help="Routing trace: a moeplace trace directory or an interchange .npz.")
]
SeedOpt = Annotated[
    int, typer.Option(min=0, max=2**32 - 1, help="Seed for the split, resampling and randomized solvers.")
]
ToleranceOpt = Annotated[
    float,
    typer.Option(
        callback=bounded(0.0, 1.0, TOLERANCE_UNIT),
        help="eps, a fraction (0.1 = 10%): capped solvers keep every device's load <= (1 + eps) x mean load.",
    ),
]
HoldoutShareOpt = Annotated[
    float,
    typer.Option(
        callback=bounded(0.0, 1.0, "the share of documents held out, between 0 and 1 (0.5 = half)"),
        help="Share of documents held out for scoring (0.5 = half).",
    ),
]
TimeLimitOpt = Annotated[
    float,
    typer.Option(
        callback=bounded(0.01, 3600.0, "seconds of CP-SAT budget per layer, 0.01 to 3600"),
        help="ortools: CP-SAT budget per layer in deterministic seconds (reproducible; wall time "
        "varies with the machine and is often several times more).",
    ),
]
JobsOpt = Annotated[
    int,
    typer.Option(min=1, max=4096, show_default="all cores", help="Processes solving layers in parallel."),
]
SearchStepsOpt = Annotated[
    int,
    typer.Option(
        min=0,
        max=10**7,
        help="refine/hypergraph/--refine: tabu-search swaps per layer after the descent (0: descent "
        "only). More finds lower fan-out and takes longer (docs/scale.md has timings).",
    ),
]
RefineOpt = Annotated[
    bool, typer.Option(help="Run the exact local search (refine) after the solver, under the load cap.")
]
NodesOpt = Annotated[
    int,
    typer.Option(
        min=1, help="Nodes M the devices sit in (D/M per node, node-major ranks); reports nodes/token."
    ),
]
NodeCostOpt = Annotated[
    float,
    typer.Option(
        callback=bounded(0.0, None, "a node's cost in devices, >= 0"),
        help="With --nodes: cost of a token's dispatch to one more node, in devices. The exact local "
        "search (refine, hypergraph, --refine) minimizes dev/token + C x nodes/token.",
    ),
]
RedundantOpt = Annotated[
    int,
    typer.Option(
        min=0,
        help="R extra slots for replicas of hot experts ((N + R) / D slots a device; R a multiple of D). "
        "eplb places them by load; any other solver is followed by co-activation-aware replica placement.",
    ),
]
ResamplesOpt = Annotated[
    int,
    typer.Option(
        min=0,
        max=32,
        help="Bootstrap resamples of the calibration documents the load cap must also hold on "
        "(0: calibration trace only). Keeps held-out load near the cap.",
    ),
]

ResampleUnit = choices("ResampleUnit", RESAMPLE_UNITS)
ResampleByOpt = Annotated[
    ResampleUnit,
    typer.Option(
        help="What a load resample draws: documents (the calibration mix of traffic), or labels: whole "
        "label groups (a label up to its first /), so the cap also holds when the mix of traffic shifts.",
    ),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option(
        help="Run on a Dask cluster (pip install 'moeplace[cluster]'): a scheduler address "
        "(tcp://host:8786; workers must read the input paths), or local: worker processes on this "
        "machine. The output is the same bytes as without it.",
    ),
]
MinSpeedupOpt = Annotated[
    float | None,
    typer.Option(
        callback=bounded(
            -1.0, 1.0, "a fraction of the better balancer's estimated step, -1 to 1 (0.05 = 5%)"
        ),
        help="Gate (with --step): fail (exit 1) unless the estimated step is at least this fraction faster "
        "than the better of frequency and eplb on the same held-out steps (0.05: 5% faster). Default "
        f"{MIN_STEP_SPEEDUP:g}: at most {-MIN_STEP_SPEEDUP:.0%} slower, the step being a model.",
    ),
]
AllowOverlapOpt = Annotated[
    bool,
    typer.Option(
        "--allow-overlap",
        help="Score a held-out set that shares documents (load records: workloads) with the "
        "placement's calibration; every figure is then labelled in-sample. Without it, refused (exit 2).",
    ),
]
AllowModelMismatchOpt = Annotated[
    bool,
    typer.Option(
        "--allow-model-mismatch",
        help="Score a held-out set recorded from another model than the placement's. Without it, refused "
        "(exit 2); an unknown model name on either side is a warning only.",
    ),
]
GroupMode = choices("GroupMode", (*GROUP_MODES, "auto"))
GroupModeOpt = Annotated[
    GroupMode,
    typer.Option(
        help="Under group-limited routing (DeepSeek-V3's n_group / topk_group, from the trace or --groups): "
        "nodes: whole groups to nodes, so a token reaches at most topk_group nodes, co-activation placed "
        "within each node; permutable: whole groups to blocks of devices, what permute-checkpoint can "
        "realize; free: ignore the groups. auto (with --step and --nodes > 1): plan nodes and free, keep "
        "the one whose estimated serving step is shorter (load records: on routing fitted to their load).",
    ),
]
GroupsOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Routing groups G of N/G consecutive experts, if the trace does not say (1: plain top-k).",
    ),
]
GroupsPerTokenOpt = Annotated[
    int | None, typer.Option(min=1, help="With --groups: the most groups a token's experts come from (K).")
]


def with_groups(data, groups: int | None, per_token: int | None):
    """``data`` (a trace or statistics) with its routing groups set by ``--groups``/``--groups-per-token``."""
    if groups is None and per_token is None:
        return data
    if groups is None or (groups > 1) != (per_token is not None):
        raise MoeplaceError(
            "--groups G needs --groups-per-token K (and --groups 1, plain top-k routing, none)"
        )
    limit = (None, None) if groups == 1 else (groups, per_token)
    meta = dataclasses.replace(data.meta, routing_groups=limit[0], groups_per_token=limit[1])
    return dataclasses.replace(data, meta=meta)


HoldoutLabelOpt = Annotated[
    str | None,
    typer.Option(
        help="Hold out the documents whose label matches these comma-separated shell patterns (law, "
        "'gpqa*') instead of a random share: fit on some kinds of traffic, score on another.",
    ),
]

SetTokensOpt = Annotated[
    int,
    typer.Option(
        min=1,
        max=2**40,
        help="Keep every token's top-k set (the exact fan-out objective of refine, hypergraph and "
        "exact) up to this many tokens; past it, a seeded hash sample of the sets of about this size. "
        "Load and co-activation always count every token.",
    ),
]


INTERRUPTS: dict[str, int] = {}  # the signal that interrupted this run, set by its handler


class Phase(str, enum.Enum):
    prefill = "prefill"
    decode = "decode"


Kernel = choices("Kernel", KERNELS)
SolverName = choices("SolverName", SOLVERS)

StepOpt = Annotated[
    Phase | None,
    typer.Option(
        help="Also replay the held-out requests as serving steps (a model): prefill chunks or "
        "continuous-batching decode, and estimate each step's dispatch, expert compute and combine.",
    ),
]
TokensPerRankOpt = Annotated[
    int, typer.Option(min=1, max=1 << 20, help="--step prefill: tokens a rank runs a step.")
]
RequestsPerRankOpt = Annotated[
    int,
    typer.Option(
        min=1, max=1 << 16, help="--step decode: live requests a rank serves, one token each a step."
    ),
]
KernelOpt = Annotated[
    Kernel,
    typer.Option(
        help="--step: how dispatch sends a token: once per remote rank (DeepEP normal, one node), once "
        "per remote node then per rank (DeepEP normal across nodes), or per expert (DeepEP low-latency).",
    ),
]
ProfileOpt = Annotated[
    str,
    typer.Option(
        help="--step: hardware profile, h800, h100, h200 or b200 (published figures, the assumed ones "
        "named), or a YAML file of measured numbers (moeplace profile writes one).",
    ),
]
OverlapOpt = Annotated[
    bool, typer.Option(help="--step: two-micro-batch overlap of communication and compute.")
]
HiddenOpt = Annotated[
    int | None,
    typer.Option(min=1, max=1 << 20, help="--step: the model's hidden size (known models: built in)."),
]
IntermediateOpt = Annotated[
    int | None, typer.Option(min=1, max=1 << 20, help="--step: one expert's intermediate size.")
]
ModelConfigOpt = Annotated[
    Path | None,
    typer.Option(
        help="--step: the model's config.json, for the whole step (attention, shared and dense layers, "
        "head); known models are built in. With only --hidden and --intermediate, the MoE part alone.",
    ),
]


def step_setting(
    phase, tokens, requests, kernel, profile, overlap, hidden, intermediate, meta, model_config=None
) -> StepSetting:
    """The step options as one ``StepSetting`` (the model's sizes from its config, the options or
    built in)."""
    if model_config is not None:
        shape = read_model_shape(model_config)
    elif hidden and intermediate:
        shape = ModelShape(hidden, intermediate)
    else:
        shape = shape_of(meta.model)
    workload = Workload(phase.value, tokens, requests, kernel.value)
    return StepSetting(workload, load_profile(profile), shape, overlap)


JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object on stdout instead of tables and lines (schemas: docs/files.md); "
        "errors and progress stay on stderr.",
    ),
]


def print_json(document: dict) -> None:
    """The one JSON object a command prints with --json (its other lines are silenced)."""
    print(json.dumps(yaml_safe(document)))


def user_errors(command):
    """Turn ``MoeplaceError`` into one line on stderr and exit code 2, and an interrupt into one
    line and exit 128 + the signal, after every ``finally`` has removed its temporary files. With
    ``--json`` (a parameter ``as_json``) the command's own lines stay off stdout."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        quiet = out.quiet
        out.quiet = quiet or bool(kwargs.get("as_json"))
        try:
            return command(*args, **kwargs)
        except MoeplaceError as exc:
            err.print(tagged("error:", "red", printable(exc.render(flag))))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see moeplace.cli.main); outputs are atomic
            err.print(tagged("error:", "red", "interrupted; no output was written"))
            raise typer.Exit(128 + INTERRUPTS.get("signal", signal.SIGINT)) from None
        finally:
            out.quiet = quiet

    return wrapper


# library parameters set by a flag of another name; any other parameter p is set by --p (dashes)
FLAGS = {"num_devices": "--devices", "num_nodes": "--nodes"}


def flag(parameter: str) -> str:
    """The flag a CLI user types to set the library's ``parameter`` (``MoeplaceError.render``)."""
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def check_order(command: str, placement: Path, data: list[Path]) -> None:
    """Refuse ``COMMAND DATA PLACEMENT`` (arguments swapped) saying which goes where: a trace or
    statistics where the placement YAML belongs, and a YAML among the data."""
    looks_like_data = placement.is_dir() or placement.suffix == ".npz"
    yaml = [path for path in data if path.suffix in (".yaml", ".yml")]
    if looks_like_data and yaml:
        raise MoeplaceError(
            f"arguments in the wrong order: {command} takes the placement YAML first, then the traffic "
            f"(traces or load records); got {placement} first and {yaml[0]} after it"
        )


def printable(text: str) -> str:
    """``text`` with control characters (a newline or an escape sequence in a file name) escaped,
    so a message stays one line and never drives the terminal."""
    return CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


# C0/C1 controls, and the invisible formatting characters (bidi overrides) that reorder a line
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


@contextlib.contextmanager
def named(path: Path):
    """Prefix a ``MoeplaceError`` raised inside with ``path`` (once: not when it names it first)."""
    try:
        yield
    except MoeplaceError as exc:
        if raw_message(exc).startswith(f"{path}:"):
            raise
        raise file_error(path, exc) from None


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:,.0f} {self.unit}/s")


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "layers"):
    """Progress on stderr; yields ``advance(n=1)``. On a terminal, a bar with rate and time left;
    otherwise (a CI log, a pipe) a plain line at least every ``LOG_EVERY`` seconds, so a long run
    is never silent, and nothing for runs shorter than that."""
    if not err.is_terminal:
        with _progress_lines(description, total, unit) as advance:
            yield advance
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


LOG_EVERY = 60.0  # seconds between progress lines when stderr is not a terminal


@contextlib.contextmanager
def _progress_lines(description: str, total: int, unit: str):
    """A daemon thread prints ``description: done/total unit, elapsed`` every ``LOG_EVERY`` s."""
    done, start, stop = [0], time.monotonic(), threading.Event()

    def report():
        while not stop.wait(LOG_EVERY):
            minutes, seconds = divmod(int(time.monotonic() - start), 60)
            err.print(f"{description}: {done[0]}/{total} {unit}, {minutes} min {seconds:02d} s")

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield lambda n=1: done.__setitem__(0, done[0] + n)
    finally:
        stop.set()
        thread.join()


MAX_LIST = 4096  # values a list option may name: more layers or device counts than any model has


def parse_ints(text: str, what: str) -> list[int]:
    """``"2,4,8"`` -> [2, 4, 8]; ``"1-4"`` ranges allowed; every value >= 0, at most ``MAX_LIST``."""
    values = []
    try:
        for part in (x.strip() for x in text.split(",")):
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi - lo >= MAX_LIST:
                    raise MoeplaceError(f"{what}: the range {part} names more than {MAX_LIST} values")
                values.extend(range(lo, hi + 1))
            elif part:
                values.append(int(part))
            if len(values) > MAX_LIST:
                raise MoeplaceError(f"{what} names more than {MAX_LIST} values")
    except ValueError:
        raise MoeplaceError(f"{what} must be comma-separated integers or ranges, got {text!r}") from None
    if not values:
        raise MoeplaceError(f"{what} is empty")
    if min(values) < 0:
        raise MoeplaceError(f"{what} must be >= 0, got {min(values)}")
    return values


def parse_tolerances(text: str) -> list[float]:
    """``"0,0.05,0.1"`` -> [0.0, 0.05, 0.1]: load tolerances, each in [0, 1]."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MoeplaceError(f"--load-tolerance must be comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
        raise MoeplaceError(f"--load-tolerance: {TOLERANCE_UNIT}; got {text!r}")
    return values


def parse_tolerance(text: str) -> float:
    """One load tolerance (``parse_tolerances``), refusing a list where one plan is made."""
    values = parse_tolerances(text)
    if len(values) != 1:
        raise MoeplaceError(
            f"--load-tolerance takes one value here (or auto), got {text!r}; compare draws the frontier "
            "over several"
        )
    return values[0]


def parse_solvers(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in SOLVERS]
    if unknown or not names:
        raise MoeplaceError(
            f"unknown solver(s) {', '.join(unknown) or '(none)'}"
            f"{did_you_mean(unknown[0], SOLVERS) if unknown else ''}; choose from {', '.join(SOLVERS)}"
        )
    return names

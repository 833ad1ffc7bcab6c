"""The options commands share, declared once each (type, range, help), and what their values
become: routing groups set on the data, the step options as one ``StepSetting``."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from pathlib import Path
from typing import Annotated

import typer

from moeplace.calibrate.stats import RESAMPLE_UNITS
from moeplace.errors import MoeplaceError
from moeplace.planner.groups import GROUP_MODES
from moeplace.planner.solvers import SOLVERS
from moeplace.validators.profile import ModelShape, load_profile, read_model_shape, shape_of
from moeplace.validators.report import MIN_STEP_SPEEDUP, StepSetting
from moeplace.validators.step import KERNELS, Workload

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
    meta, phase, tokens, requests, kernel, profile, overlap, hidden, intermediate, model_config
) -> StepSetting | None:
    """The step options as one ``StepSetting`` (the model's sizes from its config, the options or
    built in, by the ``meta`` of the traffic); None without ``--step``."""
    if phase is None:
        return None
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

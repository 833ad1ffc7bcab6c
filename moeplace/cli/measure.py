"""Measuring commands, one process per rank under torchrun: profile, bench.

Both join a ``torch.distributed`` process group (NCCL when every local rank has a GPU, else gloo
on CPU); only rank 0 prints and writes files, the other ranks stay silent; the group is always
destroyed on the way out, an error or an interrupt included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from moeplace.calibrate.stats import DEFAULT_RESAMPLES
from moeplace.calibrate.trace_io import load_trace
from moeplace.cli.app import user_errors
from moeplace.cli.console import err, named, out, print_json, tagged
from moeplace.cli.options import (
    HoldoutShareOpt,
    JsonOpt,
    Phase,
    RequestsPerRankOpt,
    ResamplesOpt,
    SeedOpt,
    SolverName,
    ToleranceOpt,
    TraceArg,
)
from moeplace.cli.planning import split_trace
from moeplace.cli.progress import progress_bar
from moeplace.errors import MoeplaceError
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.solvers.base import DEFAULT_LOAD_TOLERANCE
from moeplace.validators.profile import load_profile, shape_of
from moeplace.validators.step import Workload

CPU_SHAPE = (256, 128)  # hidden, intermediate on CPU: scaled down so a profile and a bench take seconds
CPU_TOKENS = 128  # prefill tokens a rank runs a step on CPU
GPU_SHAPE = (2880, 2880)  # on GPUs: gpt-oss-20b's, the shipped demo trace's model
DEFAULT_SOLVER = "greedy-capped"  # plan's default for a trace
GROUP_TIMEOUT = datetime.timedelta(seconds=120)  # a collective waiting this long on a lost rank fails


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place in the process group and where it computes."""

    rank: int
    world: int
    device: object  # torch.device
    backend: str

    @property
    def cuda(self) -> bool:
        return self.backend == "nccl"

    @property
    def dtype(self):
        import torch

        return torch.bfloat16 if self.cuda else torch.float32


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch():
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise MoeplaceError("this command needs torch: pip install 'moeplace[calibrate]'") from None
    if not dist.is_available():
        raise MoeplaceError("this torch build has no torch.distributed: install one that has")
    return torch, dist


@dataclasses.dataclass(frozen=True)
class Launch:
    """What torchrun told this process: its rank of ``world``, and its local rank of ``local_world``."""

    rank: int
    world: int
    local_rank: int
    local_world: int


def launched(command: str, example: str) -> Launch:
    """This process's place among the ranks torchrun started, refused in one line without torchrun
    or with one rank. Ranks other than 0 go silent for the rest of the process, their errors too
    (every rank meets the same bad input; rank 0 says it)."""
    launch = f"torchrun --standalone --nproc-per-node 2 -m moeplace.cli {command} {example}"
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise MoeplaceError(f"moeplace {command} runs one process per rank: launch it as `{launch}`")
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = Launch(
            rank,
            world,
            int(os.environ.get("LOCAL_RANK", rank)),
            int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        )
    except ValueError:
        raise MoeplaceError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them)") from None
    if world < 2:
        raise MoeplaceError(
            f"moeplace {command} measures traffic between ranks and needs 2 or more; got 1: `{launch}`"
        )
    if rank != 0:
        out.quiet = err.quiet = True
    return local


@contextlib.contextmanager
def process_group(launch: Launch):
    """Join the process group torchrun set up: NCCL when every local rank has a GPU, else gloo on
    CPU; yields ``Ranks``. The group is destroyed in any case (a rank that fails alone leaves the
    others in a collective: torchrun stops them)."""
    torch, dist = _torch()
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= launch.local_world
    device = torch.device("cuda", launch.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=GROUP_TIMEOUT)
        yield Ranks(launch.rank, launch.world, device, dist.get_backend())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def _progress(ranks: Ranks, description: str, total: int, unit: str):
    """Rank 0's progress bar (stderr); the other ranks' advance does nothing."""
    if ranks.rank != 0:
        yield lambda n=1: None
        return
    with progress_bar(description, total, unit) as advance:
        yield advance


def _shape(ranks: Ranks, hidden: int | None, intermediate: int | None) -> tuple[int, int]:
    default = GPU_SHAPE if ranks.cuda else CPU_SHAPE
    return hidden or default[0], intermediate or default[1]


def _tokens_up_to(most: int) -> tuple[int, ...]:
    """1, 4, 16, ... up to ``most`` (and ``most`` itself)."""
    values = [4**i for i in range(16) if 4**i < most]
    return (*values, most)


@user_errors
def profile(
    out_file: Annotated[
        Path, typer.Option("--out", help="Where to write the profile YAML (what --profile takes).")
    ],
    name: Annotated[str, typer.Option(help="The profile's name, printed with every estimate.")] = "measured",
    hidden: Annotated[
        int | None,
        typer.Option(
            min=128,
            max=1 << 16,
            show_default="256 on CPU, 2880 on GPUs",
            help="Hidden size of the measured expert GEMMs.",
        ),
    ] = None,
    intermediate: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1 << 16,
            show_default="128 on CPU, 2880 on GPUs",
            help="One expert's intermediate size.",
        ),
    ] = None,
    max_tokens: Annotated[
        int,
        typer.Option(
            min=1,
            max=1 << 16,
            help="Largest tokens per expert of the GEMM curve (points 1, 4, 16, ... up to it).",
        ),
    ] = 1024,
    weight_mib: Annotated[
        int,
        typer.Option(
            min=1,
            max=1 << 16,
            help="MiB of expert weights a rank reads for the weight-read bandwidth (more than the caches).",
        ),
    ] = 256,
    repeats: Annotated[
        int, typer.Option(min=1, max=1000, help="Timed samples per point; the median is kept.")
    ] = 7,
):
    """Measure this machine's hardware profile and write the YAML --profile takes.

    Run under torchrun, one process per rank: torchrun --standalone --nproc-per-node 2 -m
    moeplace.cli profile --out my.yaml. Times expert GEMMs over tokens per expert, the read
    bandwidth of expert weights and all-to-all bandwidth and latency between the ranks (NCCL on
    GPUs, gloo on CPU: float32 and scaled-down sizes), each the slowest rank's. One node: RDMA is
    not measured (the file says so).
    """
    from moeplace.validators.hardware import (
        MeasureSetting,
        measure_points,
        measure_profile,
        summary_line,
        write_profile,
    )

    start = time.perf_counter()
    launch = launched("profile", "--out my.yaml")
    if not out_file.parent.is_dir():
        raise MoeplaceError(f"{out_file}: its folder does not exist")
    with process_group(launch) as ranks:
        h, i = _shape(ranks, hidden, intermediate)
        if h % 128:
            raise MoeplaceError(f"{{=hidden}} must be a multiple of 128 (one FP8 scale per 128), got {h}")
        setting = MeasureSetting(
            hidden=h,
            intermediate=i,
            tokens=_tokens_up_to(max_tokens),
            weight_bytes=weight_mib << 20,
            repeats=repeats,
        )
        out.print(
            f"profiling {ranks.world} ranks ({ranks.backend}, {ranks.device.type}), "
            f"{dtype_name(ranks.dtype)}, hidden {h}, intermediate {i}"
            + ("; CPU: sizes scaled down" if not ranks.cuda else "")
        )
        with _progress(ranks, "profile", measure_points(setting), "points") as advance:
            measured = measure_profile(setting, name, ranks.device, ranks.dtype, advance)
        if ranks.rank == 0:
            write_profile(measured, out_file)
        out.print(summary_line(measured))
        out.print(f"written: {out_file} ({time.perf_counter() - start:.1f} s)")


@user_errors
def bench(
    trace: TraceArg,
    profile_file: Annotated[
        Path,
        typer.Option(
            "--profile", help="Profile YAML measured on this machine by `moeplace profile`: the prediction."
        ),
    ],
    devices: Annotated[
        int | None,
        typer.Option(
            min=2, max=4096, show_default="the ranks", help="Devices D: must be the ranks launched."
        ),
    ] = None,
    redundant_slots: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=4096,
            show_default="D",
            help="R replicas for the rows with replicas (0: none; a multiple of D).",
        ),
    ] = None,
    solver: Annotated[
        SolverName | None,
        typer.Option(
            metavar="<solver>",
            show_default=DEFAULT_SOLVER,
            help="moeplace's solver, benched beside frequency and eplb (any of `moeplace plan --solver`).",
        ),
    ] = None,
    load_tolerance: ToleranceOpt = DEFAULT_LOAD_TOLERANCE,
    holdout_share: HoldoutShareOpt = 0.5,
    seed: SeedOpt = 0,
    resamples: ResamplesOpt = DEFAULT_RESAMPLES,
    step: Annotated[
        Phase, typer.Option(help="Which steps to run: prefill chunks or continuous-batching decode.")
    ] = Phase.prefill,
    tokens_per_rank: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1 << 16,
            show_default=f"{CPU_TOKENS} on CPU, 1024 on GPUs",
            help="prefill: tokens a rank runs a step.",
        ),
    ] = None,
    requests_per_rank: RequestsPerRankOpt = 32,
    max_steps: Annotated[
        int, typer.Option(min=1, max=100_000, help="Held-out steps run (the first full ones).")
    ] = 10,
    layers: Annotated[
        int | None,
        typer.Option(min=1, max=4096, show_default="all", help="MoE layers run: the trace's first N."),
    ] = None,
    repeats: Annotated[
        int, typer.Option(min=2, max=1000, help="Runs of every placement, round robin: the spread.")
    ] = 5,
    hidden: Annotated[
        int | None,
        typer.Option(
            min=128,
            max=1 << 16,
            show_default="the profile's on CPU, the model's on GPUs",
            help="Hidden size of the benched layer (a multiple of 128).",
        ),
    ] = None,
    intermediate: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1 << 16,
            show_default="the profile's on CPU, the model's on GPUs",
            help="One expert's intermediate size.",
        ),
    ] = None,
    as_json: JsonOpt = False,
):
    """Measure the serving step of each placement on a real expert-parallel MoE layer.

    Run under torchrun, one process per device: torchrun --standalone --nproc-per-node 2 -m
    moeplace.cli bench TRACE --profile my.yaml. Splits TRACE by documents as compare does, plans
    frequency, eplb and the solver (without and with R replicas), and runs the held-out steps on
    every placement: dispatch (all-to-all, FP8), expert GEMMs (random weights), combine (BF16),
    each phase timed to its slowest rank, --repeats times round robin. Prints each placement's
    measured step with its spread and its speedup against frequency beside the step model's
    prediction for the same steps on the profile.
    """
    from moeplace.validators.bench import (
        BenchSetting,
        BenchShape,
        candidates,
        run_bench,
        select_steps,
    )
    from moeplace.validators.hardware import measured_setting

    start = time.perf_counter()
    launch = launched("bench", f"{trace} --profile my.yaml")
    data = load_trace(trace)
    with named(profile_file):
        hardware = load_profile(str(profile_file))
        setting_measured = measured_setting(profile_file)
    with process_group(launch) as ranks:
        num_devices = ranks.world if devices is None else devices
        if num_devices != ranks.world:
            raise MoeplaceError(f"{{=num_devices}} {num_devices} must be the {ranks.world} ranks launched")
        replicas = num_devices if redundant_slots is None else redundant_slots
        h, i, shape_note = _bench_shape(ranks, hidden, intermediate, setting_measured, data.meta.model)
        if h % 128:
            raise MoeplaceError(f"{{=hidden}} must be a multiple of 128 (one FP8 scale per 128), got {h}")
        n_layers = data.num_layers if layers is None else min(layers, data.num_layers)
        batch = tokens_per_rank or (1024 if ranks.cuda else CPU_TOKENS)
        workload = Workload(step.value, batch, requests_per_rank, "rank")
        with named(trace):
            fit, held = split_trace(data, holdout_share, None, seed)
            options = SolverOptions(seed=seed, load_tolerance=load_tolerance)
            solver_name = DEFAULT_SOLVER if solver is None else solver.value
            placements = candidates(fit, num_devices, replicas, solver_name, options, resamples)
        steps = select_steps(held, num_devices, workload, max_steps)
        if steps.count == 0:
            raise MoeplaceError(f"{trace}: the held-out documents hold no step to run")
        weight_bytes = 2.0 if ranks.cuda else 4.0
        setting = BenchSetting(
            workload=workload,
            shape=BenchShape(hidden=h, intermediate=i, weight_bytes=weight_bytes),
            profile=hardware,
            layer_overhead=hardware.layer_overhead_us * 1e-6,
            repeats=repeats,
            layers=n_layers,
            dtype=ranks.dtype,
            device=ranks.device,
        )
        notes = _notes(ranks, setting, shape_note, setting_measured, steps)
        out.print(
            f"bench: {ranks.world} ranks ({ranks.backend}), {data.meta.model}, {n_layers} of "
            f"{data.num_layers} MoE layers, {steps.count} held-out {workload.phase} steps "
            f"({workload.batch_text}), "
            f"{len(placements)} placements x {repeats} runs"
        )
        with _progress(ranks, "bench", steps.count * repeats, "steps") as advance:
            result = run_bench(placements, held, steps, setting, notes, advance)
        seconds = time.perf_counter() - start
        if as_json:
            if ranks.rank == 0:
                print_json(result.summary() | {"seconds": seconds})
            return
        _print_bench(result)
        out.print(f"({seconds:.1f} s)")


def _bench_shape(ranks: Ranks, hidden, intermediate, measured: dict, model: str) -> tuple[int, int, str]:
    """The benched sizes and a note on where they come from."""
    if hidden and intermediate:
        h, i = hidden, intermediate
    elif ranks.cuda:
        real = shape_of(model)
        h, i = hidden or real.hidden, intermediate or real.intermediate
    else:
        h = hidden or int(measured.get("hidden", CPU_SHAPE[0]))
        i = intermediate or int(measured.get("intermediate", CPU_SHAPE[1]))
    with contextlib.suppress(MoeplaceError):
        real = shape_of(model)
        if (h, i) != (real.hidden, real.intermediate):
            real_text = f"{model}: {real.hidden}, {real.intermediate}"
            return h, i, f"sizes scaled down: hidden {h}, intermediate {i} ({real_text})"
    return h, i, f"hidden {h}, intermediate {i}"


def _notes(ranks: Ranks, setting, shape_note: str, measured: dict, steps) -> list[str]:
    """What the reader must know to read the figures."""
    dtype = str(setting.dtype).removeprefix("torch.")
    notes = [
        shape_note,
        f"expert compute in {dtype} (random weights); messages in the model's bytes: dispatch FP8 with "
        "one fp32 scale per 128 channels, combine BF16; the prediction reads "
        f"{setting.shape.weight_bytes:g} bytes a weight (the model's FP8: 1)",
        f"predicted: the step model on profile {setting.profile.name} (phases in a row, no overlap) plus "
        f"{setting.layer_overhead * 1e6:.0f} us a layer of collective latency (the profile's "
        "layer_overhead_us); measured: each phase from a barrier to its slowest rank, summed over layers",
    ]
    if measured.get("hidden") and (measured.get("hidden"), measured.get("intermediate")) != (
        setting.shape.hidden,
        setting.shape.intermediate,
    ):
        notes.append(
            f"the profile was measured at hidden {measured['hidden']}, intermediate "
            f"{measured['intermediate']}: its GEMM figures may not fit these sizes"
        )
    if measured.get("backend") and measured.get("backend") != ranks.backend:
        notes.append(f"the profile was measured with {measured['backend']}, this bench runs {ranks.backend}")
    if not steps.full:
        notes.append("no held-out step has every rank's batch full: the steps run are partial")
    return notes


def _print_bench(result) -> None:
    """Two tables (the step and its speedup; the phases), the verdict per placement, the notes."""
    from rich import box
    from rich.table import Table

    from moeplace.validators.bench import PHASES

    runs = result.setting.repeats
    table = Table(
        title=f"MoE part of a step (ms), {result.steps.count} held-out steps x {result.setting.layers} "
        f"layers: median of {runs} runs, and the speedup vs {result.baseline.label}",
        box=box.SIMPLE,
    )
    for column in ("placement", "measured", "predicted", "speedup", "runs, pts", "predicted"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    for row in result.rows:
        speedup = result.speedup(row)
        table.add_row(
            row.label,
            f"{np.median(row.measured_moe) * 1e3:.1f}",
            f"{row.predicted_moe * 1e3:.1f}",
            f"{np.median(speedup):+.1%}",
            f"{speedup.min() * 100:+.1f}..{speedup.max() * 100:+.1f}",
            f"{result.predicted_speedup(row):+.1%}",
        )
    out.print(table)
    phases = Table(
        title="per phase (ms): measured / predicted; and the predicted collective latency", box=box.SIMPLE
    )
    for column in ("placement", "dispatch", "compute", "combine", "latency"):
        phases.add_column(column, justify="right", no_wrap=True)
    for row in result.rows:
        measured = np.median(row.phases, axis=0) * 1e3  # [3] ms, in PHASES order
        phases.add_row(
            row.label,
            *(
                f"{m:.1f} / {getattr(row.predicted, p) * 1e3:.1f}"
                for m, p in zip(measured, PHASES, strict=True)
            ),
            f"{row.overhead * 1e3:.1f}",
        )
    out.print(phases)
    out.print(f"speedup: 1 - step / {result.baseline.label}'s, measured per round of runs (paired)")
    for row in result.rows[1:]:
        out.print("  " + result.verdict(row))
    for note in result.notes:
        out.print(tagged("note:", "cyan", note))

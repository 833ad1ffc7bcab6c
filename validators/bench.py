"""The step model measured: a real expert-parallel MoE layer on D ranks, fed held-out steps.

Each rank holds its placement's experts (random weights of the given sizes) and runs the held-out
trace's steps as ``validators/step.py`` replays them (``schedule``: which rank runs each token and
when; ``dispatch``: which replica serves each (token, expert)), layer by layer, in three phases
timed apart, each starting from a barrier so that it lasts as long as its slowest rank:

- dispatch: ``all_to_all_single`` of the split sizes, then of the payload: one copy of a token's
  hidden state to every rank holding one of its experts (DeepEP's normal kernels, the ``rank``
  sending rule; a rank's own copy too, as a local copy), in the model's bytes: FP8 values with one
  fp32 scale per 128 (``hidden x (1 + 4/128)`` bytes a token);
- expert compute: dequantize, then each local expert's gate, up and down projections on the tokens
  routed to it, weighted and summed per token;
- combine: the per-token sums back to their source rank in BF16 (``2 x hidden`` bytes), added up.

Per step the three phases' times are summed over layers; a run is the mean over the measured
steps, and runs repeat round robin over the placements so that drift hits all alike. Beside each,
the step model's prediction for the same steps (``rank_traffic`` on the same served ranks,
``step_time`` on a measured profile), plus the latency of a layer's collectives, which the model
leaves out (``layer_overhead_us`` of the profile).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.trace import Trace
from moeplace.planner.dispatch import dispatch, replica_devices
from moeplace.planner.placement import yaml_safe
from moeplace.planner.plan import plan
from moeplace.planner.solvers import BASELINE, SolverOptions
from moeplace.planner.solvers.eplb import eplb_slots
from moeplace.planner.topology import Topology
from moeplace.validators.hardware import barrier, run_experts, slowest, timer
from moeplace.validators.profile import ModelShape, Profile, StepTime, step_time
from moeplace.validators.report import baseline_placement
from moeplace.validators.step import FIGURES, StepCost, Workload, full_steps, rank_traffic, schedule

KERNEL = "rank"  # the sending rule the bench implements: one copy per destination rank
SCALE_BLOCK = 128  # channels sharing one fp32 scale in a dispatched FP8 hidden state
PHASES = ("dispatch", "compute", "combine")


@dataclasses.dataclass(frozen=True)
class BenchShape(ModelShape):
    """A ``ModelShape`` whose expert weights take ``weight_bytes`` bytes an element (the model's
    FP8: 1; the bench's float32 on CPU: 4, BF16 on GPU: 2), so the step model reads the bytes the
    bench reads. Messages are the model's bytes (the bench sends FP8 and BF16)."""

    weight_bytes: float = 1.0

    @property
    def expert_bytes(self) -> float:
        return 3.0 * self.hidden * self.intermediate * self.weight_bytes


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A placement to bench: ``physical_to_logical`` int ``[L, P]`` on ``topology``."""

    solver: str
    topology: Topology
    physical_to_logical: np.ndarray

    @property
    def label(self) -> str:
        r = self.topology.redundant_slots
        return f"{self.solver} R={r}" if r else self.solver


def candidates(
    fit: Trace,
    num_devices: int,
    redundant_slots: int,
    solver: str,
    options: SolverOptions,
    resamples: int,
) -> list[Candidate]:
    """The placements to bench, fit on ``fit`` as ``moeplace compare`` fits them: frequency
    (``BASELINE``), eplb and ``solver`` without replicas, then eplb and ``solver`` with
    ``redundant_slots`` replicas (when > 0). Frequency and eplb are fit on the calibration load."""
    n = fit.meta.num_experts
    stats = compute_statistics(fit, resamples=resamples, seed=options.seed)
    plain = Topology(n, num_devices)
    placed = plan(stats, plain, solver, options, fit.provenance())
    load = placed.calibration_load
    rows = [
        Candidate(BASELINE, plain, baseline_placement(load, plain)),
        Candidate("eplb", plain, eplb_slots(load, plain)),
        Candidate(solver, plain, placed.physical_to_logical),
    ]
    if redundant_slots:
        spare = Topology(n, num_devices, 1, redundant_slots)
        replicated = plan(stats, spare, solver, options, fit.provenance())
        rows += [
            Candidate("eplb", spare, eplb_slots(load, spare)),
            Candidate(solver, spare, replicated.physical_to_logical),
        ]
    return rows


@dataclasses.dataclass(frozen=True)
class Steps:
    """The held-out steps measured: ``tokens`` int64 ``[T]`` (held-out token indices, by step, then
    rank, then arrival), ``step`` int64 ``[T]`` (0 to ``count`` - 1), ``source`` int64 ``[T]`` (the
    rank running it); ``batch``: tokens a rank runs in a step, on average; ``replayed``: steps of
    the whole held-out replay; ``full``: whether every measured step has every rank's batch full."""

    tokens: np.ndarray
    step: np.ndarray
    source: np.ndarray
    count: int
    batch: float
    replayed: int
    full: bool

    def bounds(self) -> np.ndarray:
        """int64 ``[count + 1]``: where each step's tokens start in ``tokens``."""
        return np.searchsorted(self.step, np.arange(self.count + 1))


def select_steps(holdout: Trace, num_ranks: int, workload: Workload, max_steps: int) -> Steps:
    """The first ``max_steps`` steps of ``holdout`` replayed under ``workload`` in which every rank
    runs a full batch (``full_steps``: the steady state the step model counts; all steps when none
    is full)."""
    step, source = schedule(holdout.doc_offsets, num_ranks, workload)
    replayed = int(step.max()) + 1 if step.size else 0
    batches = np.bincount(step * num_ranks + source, minlength=replayed * num_ranks).reshape(replayed, -1)
    counted = full_steps(batches, workload)
    chosen = np.flatnonzero(counted)[:max_steps]
    local = np.full(replayed, -1, np.int64)
    local[chosen] = np.arange(chosen.shape[0])
    kept = np.flatnonzero(local[step] >= 0)
    order = kept[np.lexsort((kept, source[kept], local[step[kept]]))]
    return Steps(
        tokens=order,
        step=local[step[order]],
        source=source[order],
        count=int(chosen.shape[0]),
        batch=float(batches[chosen].mean()) if chosen.size else 0.0,
        replayed=replayed,
        full=bool((batches[chosen] == workload.batch).all()),
    )


def served_ranks(candidate: Candidate, ids: np.ndarray) -> np.ndarray:
    """int64 ``[L, T, k]``: the rank serving each (token, expert) of ``ids`` int ``[T, L, k]`` under
    the dispatch policy (all tokens as one batch, as ``step_cost`` replays a trace); the placement's
    first L layers."""
    topology = candidate.topology
    served = np.empty((ids.shape[1], *ids.shape[::2]), np.int64)
    for layer, row in enumerate(candidate.physical_to_logical[: ids.shape[1]]):
        replicas = replica_devices(row, topology.num_experts, topology.slots_per_device)
        served[layer] = dispatch(ids[:, layer, :], np.ones(ids.shape[0]), replicas, topology.num_devices)
    return served


def predicted_cost(served: np.ndarray, ids: np.ndarray, steps: Steps, topology: Topology) -> StepCost:
    """The step model's counts for exactly the measured steps: ``rank_traffic`` per layer on the
    ranks the bench serves from, ``served`` int ``[L, T, k]``, every step counted."""
    layers, ranks = served.shape[0], topology.num_devices
    counts = {figure: np.zeros((layers, steps.count, ranks)) for figure in FIGURES}
    for layer in range(layers):
        traffic = rank_traffic(
            served[layer], ids[:, layer, :], steps.step, steps.source, steps.count, topology, KERNEL
        )
        for figure, values in traffic.items():
            counts[figure][layer] = values
    return StepCost.from_counts(counts, np.ones(steps.count, bool), steps.batch, steps.count)


@dataclasses.dataclass(frozen=True)
class RankWork:
    """What one rank does in one layer of one step (indices into its own buffers).

    ``send_rows`` int64 ``[n_send]``: rows of the rank's batch, grouped by destination rank
    (``send_counts`` int64 ``[D]`` each); ``receive_counts`` int64 ``[D]``: rows it receives from
    each rank; ``pair_rows`` int64 ``[pairs]``: rows of its receive buffer, grouped by local expert
    slot (``slot_offsets`` int64 ``[slots + 1]``); ``batch``: rows of its batch."""

    send_rows: np.ndarray
    send_counts: np.ndarray
    receive_counts: np.ndarray
    pair_rows: np.ndarray
    slot_offsets: np.ndarray
    batch: int


def local_slots(physical_to_logical: np.ndarray, topology: Topology) -> np.ndarray:
    """int64 ``[N, D]``: the slot (0 to slots a device - 1) holding expert e on device d, -1 none
    (the first, if a device holds two)."""
    spd, n = topology.slots_per_device, topology.num_experts
    table = np.full((n, topology.num_devices), -1, np.int64)
    slot = np.arange(physical_to_logical.shape[0])[::-1]
    table[physical_to_logical[::-1], slot // spd] = slot % spd  # reversed: the first slot written last
    return table


def rank_work(
    served: np.ndarray, experts: np.ndarray, source: np.ndarray, rank: int, slots: np.ndarray, num_slots: int
) -> RankWork:
    """``RankWork`` of ``rank`` for one step and layer: tokens sorted by ``source`` rank (int
    ``[n]``, then arrival), served on ranks ``served`` int ``[n, k]`` (-1 none) for ``experts``
    int ``[n, k]``; ``slots``: ``local_slots`` int ``[N, D]`` of the ``num_slots`` a rank has."""
    n, ranks = served.shape[0], slots.shape[1]
    hits = np.zeros((n, ranks + 1), bool)  # [n, D]: the ranks a token goes to (column D: none)
    hits[np.arange(n)[:, None], np.where(served >= 0, served, ranks)] = True
    hits = hits[:, :ranks]
    own = np.flatnonzero(source == rank)
    destination, row = np.nonzero(hits[own].T)  # destination-major, rows ascending within
    received = hits[:, rank]
    position = np.cumsum(received) - 1  # [n]: a received token's row in the receive buffer
    token, column = np.nonzero(served == rank)
    slot = slots[experts[token, column], rank]
    order = np.argsort(slot, kind="stable")
    return RankWork(
        send_rows=row.astype(np.int64),
        send_counts=np.bincount(destination, minlength=ranks).astype(np.int64),
        receive_counts=np.bincount(source[received], minlength=ranks).astype(np.int64),
        pair_rows=position[token[order]].astype(np.int64),
        slot_offsets=np.searchsorted(slot[order], np.arange(num_slots + 1)).astype(np.int64),
        batch=int(own.size),
    )


@dataclasses.dataclass(frozen=True)
class BenchSetting:
    """How to run and predict: the ``workload`` (its kernel must be ``rank``), model ``shape``,
    measured ``profile`` and the latency of a layer's collectives (``layer_overhead`` seconds), runs
    per placement, layers run (the trace's first), and torch ``dtype`` and ``device``."""

    workload: Workload
    shape: BenchShape
    profile: Profile
    layer_overhead: float
    repeats: int
    layers: int
    dtype: object
    device: object


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One placement: ``measured`` float ``[repeats, S, 3]`` seconds of each run's steps (dispatch,
    compute, combine; sums over layers, each phase its slowest rank's), the step
    model's ``predicted`` time of the same steps, and ``overhead``: seconds per step of collective
    latency added to the prediction (layers x the profile's layer overhead)."""

    label: str
    solver: str
    redundant_slots: int
    measured: np.ndarray
    predicted: StepTime
    overhead: float
    cost: StepCost

    @property
    def phases(self) -> np.ndarray:
        """float ``[repeats, 3]``: seconds per step of each phase, means over the steps of a run."""
        return self.measured.mean(axis=1)

    @property
    def measured_moe(self) -> np.ndarray:
        """float ``[repeats]``: seconds per step, the three phases in a row, means over a run's steps."""
        return self.phases.sum(axis=1)

    @property
    def predicted_moe(self) -> float:
        """Seconds per step predicted, the three phases in a row, collective latency included."""
        t = self.predicted
        return t.dispatch + t.compute + t.combine + self.overhead


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Every placement's row (the first is ``BASELINE``'s), and what was run."""

    rows: list[BenchRow]
    steps: Steps
    setting: BenchSetting
    ranks: int
    notes: tuple[str, ...]

    @property
    def baseline(self) -> BenchRow:
        return self.rows[0]

    def speedup(self, row: BenchRow) -> np.ndarray:
        """float ``[repeats]``: 1 - step / the baseline's step, per round of runs (paired)."""
        return 1.0 - row.measured_moe / self.baseline.measured_moe

    def predicted_speedup(self, row: BenchRow) -> float:
        return 1.0 - row.predicted_moe / self.baseline.predicted_moe

    def verdict(self, row: BenchRow) -> str:
        """Where the measured speedup lies against its spread over the runs, and the prediction."""
        speedup, predicted = self.speedup(row), self.predicted_speedup(row)
        low, high, middle = float(speedup.min()), float(speedup.max()), float(np.median(speedup))
        zero = "0 inside it: not told apart from no change" if low <= 0 <= high else "0 outside it"
        where = "inside" if low <= predicted <= high else "outside"
        return (
            f"{row.label}: speedup measured {middle:+.1%} (runs {low:+.1%} to {high:+.1%}, std "
            f"{speedup.std() * 100:.1f} points; {zero}); predicted {predicted:+.1%}, "
            f"{(predicted - middle) * 100:+.1f} points from the measured, {where} its spread"
        )

    def summary(self) -> dict:
        """JSON-safe: the setting, then per placement the measured and predicted figures."""
        w, shape = self.setting.workload, self.setting.shape

        def figures(row: BenchRow) -> dict:
            speedup = self.speedup(row)
            return {
                "placement": row.label,
                "solver": row.solver,
                "redundant_slots": row.redundant_slots,
                "measured_ms": float(np.median(row.measured_moe)) * 1e3,
                "measured_ms_min": float(row.measured_moe.min()) * 1e3,
                "measured_ms_max": float(row.measured_moe.max()) * 1e3,
                "measured_ms_runs": (row.measured_moe * 1e3).tolist(),
                **{
                    f"measured_{phase}_ms": float(np.median(row.phases[:, i])) * 1e3
                    for i, phase in enumerate(PHASES)
                },
                "predicted_ms": row.predicted_moe * 1e3,
                **{f"predicted_{phase}_ms": getattr(row.predicted, phase) * 1e3 for phase in PHASES},
                "predicted_overhead_ms": row.overhead * 1e3,
                "speedup": float(np.median(speedup)),
                "speedup_min": float(speedup.min()),
                "speedup_max": float(speedup.max()),
                "speedup_std": float(speedup.std()),
                "speedup_runs": speedup.tolist(),
                "predicted_speedup": self.predicted_speedup(row),
                "traffic": row.cost.summary(),
            }

        return yaml_safe(
            {
                "ranks": self.ranks,
                "workload": dataclasses.asdict(w),
                "steps": self.steps.count,
                "full_steps": self.steps.full,
                "replayed_steps": self.steps.replayed,
                "layers": self.setting.layers,
                "repeats": self.setting.repeats,
                "hidden": shape.hidden,
                "intermediate": shape.intermediate,
                "weight_bytes": shape.weight_bytes,
                "dtype": str(self.setting.dtype).removeprefix("torch."),
                "profile": self.setting.profile.name,
                "layer_overhead_us": self.setting.layer_overhead * 1e6,
                "baseline": self.baseline.label,
                "notes": list(self.notes),
                "placements": [figures(row) for row in self.rows],
            }
        )


def model_time(cost: StepCost, shape: ModelShape, profile: Profile) -> StepTime:
    """``step_time`` on ``profile`` without any per-layer latency of its own (the bench adds the
    measured one itself, so that it is counted once whatever the profile carries)."""
    return step_time(cost, shape, dataclasses.replace(profile, layer_overhead_us=0.0), KERNEL)


def quantize(x):
    """``x`` ``[n, h]`` as the dispatched bytes, uint8 ``[n, h + 4 h / 128]``: FP8 (e4m3) values,
    then one fp32 scale per 128 channels."""
    import torch

    n, h = x.shape
    blocks = x.float().reshape(n, h // SCALE_BLOCK, SCALE_BLOCK)
    scale = blocks.abs().amax(dim=2, keepdim=True).clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max
    values = (blocks / scale).to(torch.float8_e4m3fn).reshape(n, h).view(torch.uint8)
    return torch.cat([values, scale.reshape(n, h // SCALE_BLOCK).contiguous().view(torch.uint8)], dim=1)


def dequantize(message, hidden: int, dtype):
    """``quantize``'s bytes, uint8 ``[n, h + 4 h / 128]``, back to ``dtype`` ``[n, h]``: on CPU
    through a 256-entry table of the FP8 values (exact, and several times faster there than
    torch's conversion; on GPUs dequantization is fused into the GEMM)."""
    import torch

    n = message.shape[0]
    codes = message[:, :hidden]
    if message.device.type == "cpu":
        table = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(dtype)
        values = table.index_select(0, codes.reshape(-1).to(torch.int32)).reshape(n, hidden)
    else:
        values = codes.contiguous().view(torch.float8_e4m3fn).to(dtype)
    scale = message[:, hidden:].contiguous().view(torch.float32).to(dtype)
    return (values.reshape(n, hidden // SCALE_BLOCK, SCALE_BLOCK) * scale.unsqueeze(2)).reshape(n, hidden)


def run_bench(
    candidates: Sequence[Candidate],
    holdout: Trace,
    steps: Steps,
    setting: BenchSetting,
    notes: Sequence[str] = (),
    on_step: Callable[[], None] = lambda: None,
) -> BenchResult:
    """Run every candidate's measured steps ``setting.repeats`` times on this process group
    (``on_step`` after each step of every candidate), and predict each with the step model.

    Candidates take turns layer by layer (the first in turn rotating), so that the machine's
    drift hits each alike; each candidate reads weights of its own where they fit
    (``_weight_banks``)."""
    import torch
    import torch.distributed as dist

    rank, ranks = dist.get_rank(), dist.get_world_size()
    if any(c.topology.num_devices != ranks for c in candidates):
        raise ValueError("every candidate must place experts on the process group's ranks")
    ids = np.asarray(holdout.topk_ids[steps.tokens])[:, : setting.layers]  # [T, L, k]
    bounds = steps.bounds()
    plans, predictions = [], []
    for candidate in candidates:
        served = served_ranks(candidate, ids)
        cost = predicted_cost(served, ids, steps, candidate.topology)
        predictions.append((cost, model_time(cost, setting.shape, setting.profile)))
        plans.append(_rank_plan(candidate, served, ids, steps, bounds, rank, setting.device))
    shape, dtype, device = setting.shape, setting.dtype, setting.device
    banks = _weight_banks(candidates, setting)
    most = max(work.batch for rank_plan in plans for step in rank_plan for work in step)
    hidden_states = quantize(torch.randn(most, shape.hidden, device=device) / 2)
    pair_weight = torch.full((ids.shape[0] * ids.shape[2], 1), 1.0 / ids.shape[2], dtype=dtype, device=device)

    def layer(i: int, s: int, layer: int) -> tuple[float, float, float]:
        bank = banks[i % len(banks)][layer]
        return _run_layer(plans[i][s][layer], hidden_states, bank, pair_weight, shape.hidden, dtype, device)

    for i in range(len(plans)):  # warm-up: the first step of each placement
        for warm in range(setting.layers):
            layer(i, 0, warm)
    # [placement, run, step, layer, phase]: every layer of every step runs each placement in turn,
    # the first of them rotating, so that drift in the machine's speed hits every placement alike
    count = len(plans)
    measured = np.zeros((count, setting.repeats, steps.count, setting.layers, len(PHASES)))
    for run in range(setting.repeats):
        local = np.zeros(measured.shape[:1] + measured.shape[2:])
        for s in range(steps.count):
            for index in range(setting.layers):
                for turn in range(count):
                    i = (turn + s * setting.layers + index) % count
                    local[i, s, index] = layer(i, s, index)
            on_step()
        measured[:, run] = slowest(local.ravel(), device).reshape(local.shape)
    overhead = setting.layers * setting.layer_overhead
    rows = [
        BenchRow(c.label, c.solver, c.topology.redundant_slots, measured[i].sum(axis=2), t, overhead, cost)
        for i, (c, (cost, t)) in enumerate(zip(candidates, predictions, strict=True))
    ]
    return BenchResult(rows, steps, setting, ranks, tuple(notes))


@dataclasses.dataclass(frozen=True)
class _Work:
    """``RankWork`` as tensors on the device, split sizes as lists."""

    send_rows: object
    send_counts: object  # int64 tensor [D]
    send_sizes: list
    pair_rows: object
    slot_offsets: list
    batch: int


def _rank_plan(candidate, served, ids, steps: Steps, bounds, rank: int, device) -> list[list[_Work]]:
    """This rank's work per measured step and layer."""
    import torch

    slots = [local_slots(row, candidate.topology) for row in candidate.physical_to_logical[: served.shape[0]]]
    spd = candidate.topology.slots_per_device
    plan = []
    for s in range(steps.count):
        lo, hi = bounds[s], bounds[s + 1]
        layer_work = []
        for layer in range(served.shape[0]):
            work = rank_work(
                served[layer, lo:hi], ids[lo:hi, layer], steps.source[lo:hi], rank, slots[layer], spd
            )
            layer_work.append(
                _Work(
                    send_rows=torch.from_numpy(work.send_rows).to(device),
                    send_counts=torch.from_numpy(work.send_counts).to(device),
                    send_sizes=work.send_counts.tolist(),
                    pair_rows=torch.from_numpy(work.pair_rows).to(device),
                    slot_offsets=work.slot_offsets.tolist(),
                    batch=work.batch,
                )
            )
        plan.append(layer_work)
    return plan


def _expert_bank(slots: int, shape: ModelShape, dtype, device, seed: int) -> list:
    from moeplace.validators.hardware import expert_weights

    return expert_weights(slots, shape.hidden, shape.intermediate, dtype, device, seed=seed)


def _weight_banks(candidates: Sequence[Candidate], setting: BenchSetting) -> list[list]:
    """Random expert weights per layer, ``[bank][layer]`` each ``slots`` experts: one bank per
    candidate when all fit in half the device's free memory (as a model's layers each read their
    own), else one bank for all (then the candidates' turns share warm weights)."""
    import torch

    shape, dtype, device = setting.shape, setting.dtype, setting.device
    slots = max(c.topology.slots_per_device for c in candidates)
    element = torch.empty((), dtype=dtype).element_size()
    per_bank = setting.layers * slots * 3 * shape.hidden * shape.intermediate * element
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _free_memory()
    count = len(candidates) if per_bank * len(candidates) <= free / 2 else 1
    return [
        [
            _expert_bank(slots, shape, dtype, device, seed=bank * 4096 + layer)
            for layer in range(setting.layers)
        ]
        for bank in range(count)
    ]


def _free_memory() -> int:
    """Bytes of memory available on this machine (Linux), or 8 GiB when unknown."""
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _run_layer(work: _Work, hidden_states, bank: list, pair_weight, hidden: int, dtype, device):
    """One MoE layer on this rank: seconds of its dispatch, expert compute and combine, each
    timed from a barrier (so each lasts to its slowest rank; compute is this rank's own)."""
    import torch
    import torch.distributed as dist

    now = timer(device)
    barrier(device)
    start = now()
    sizes = torch.empty_like(work.send_counts)
    dist.all_to_all_single(sizes, work.send_counts)  # what a rank will receive: the layout
    receive_sizes = sizes.tolist()
    send = hidden_states.index_select(0, work.send_rows)
    received = torch.empty((sum(receive_sizes), hidden_states.shape[1]), dtype=torch.uint8, device=device)
    dist.all_to_all_single(received, send, receive_sizes, work.send_sizes)
    dispatched = now()
    barrier(device)
    start_compute = now()
    x = dequantize(received, hidden, dtype)
    sums = torch.zeros_like(x)
    run_experts(x, work.pair_rows, pair_weight, work.slot_offsets, bank, sums)
    reply = sums.to(torch.bfloat16).view(torch.uint8)
    computed = now()
    barrier(device)
    start_combine = now()
    back = torch.empty((sum(work.send_sizes), reply.shape[1]), dtype=torch.uint8, device=device)
    dist.all_to_all_single(back, reply, work.send_sizes, receive_sizes)
    output = torch.zeros((work.batch, hidden), dtype=dtype, device=device)
    output.index_add_(0, work.send_rows, back.view(torch.bfloat16).to(dtype))
    combined = now()
    return dispatched - start, computed - start_compute, combined - start_combine

"""Step search: swaps of experts between ranks that shorten the serving step itself.

The solvers minimize mean devices per token under a load cap, a proxy. This search starts from a
placement and swaps pairs of experts on different ranks, keeping a swap when it lowers the layer's
estimated step time (``step_time``: the busiest rank's dispatch, compute and combine, weighed by
the hardware profile) over steps sampled from the *calibration* trace: the trace scheduled as
serving steps under several document orders, the steady-state steps of each. There is no load
cap: the objective prices imbalance step by step, where it is paid. Each round draws a fixed
number of random swaps (seeded) and applies the best that helps, until the budget of evaluations
is spent. Placements without replicas only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from moeplace.calibrate.trace import Trace
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement
from moeplace.planner.topology import Topology
from moeplace.validators.profile import step_time
from moeplace.validators.report import StepSetting
from moeplace.validators.step import StepCost, full_steps, rank_traffic, schedule, sending_rule

SWAPS_PER_ROUND = 32


@dataclasses.dataclass(frozen=True)
class SampledSteps:
    """Steps to replay: trace row, step and source rank of each token, int64 ``[T']`` each."""

    tokens: np.ndarray
    step: np.ndarray
    source: np.ndarray
    num_steps: int


def sample_steps(
    doc_offsets: np.ndarray, num_ranks: int, setting: StepSetting, orders: int, max_steps: int, seed: int
) -> SampledSteps:
    """The steady-state steps of the trace scheduled under its own document order and ``orders``
    - 1 seeded shuffles of it, at most ``max_steps`` in all. ``doc_offsets``: int ``[D+1]``."""
    lengths = np.diff(doc_offsets)
    rng = np.random.default_rng(seed)
    tokens, steps, sources, count = [], [], [], 0
    for i in range(orders):
        order = np.arange(lengths.shape[0]) if i == 0 else rng.permutation(lengths.shape[0])
        rows = _rows_in_order(doc_offsets, order)
        step, source = schedule(np.concatenate([[0], np.cumsum(lengths[order])]), num_ranks, setting.workload)
        replayed = int(step.max()) + 1 if step.size else 0
        batches = np.bincount(step * num_ranks + source, minlength=replayed * num_ranks)
        counted = full_steps(batches.reshape(replayed, num_ranks), setting.workload)
        counted &= np.cumsum(counted) <= max_steps - count
        keep = counted[step]
        tokens.append(rows[keep])
        steps.append((np.cumsum(counted) - 1 + count)[step[keep]])
        sources.append(source[keep])
        count += int(counted.sum())
        if count >= max_steps:
            break
    return SampledSteps(np.concatenate(tokens), np.concatenate(steps), np.concatenate(sources), count)


def _rows_in_order(doc_offsets: np.ndarray, order: np.ndarray) -> np.ndarray:
    """int64 ``[T]``: the trace rows of the documents ``order`` lists, document by document."""
    lengths = np.diff(doc_offsets)[order]
    starts = np.repeat(doc_offsets[order] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return starts + np.arange(int(lengths.sum()))


def layer_step_seconds(
    expert_to_device: np.ndarray,
    ids: np.ndarray,
    steps: SampledSteps,
    topology: Topology,
    setting: StepSetting,
) -> float:
    """Estimated seconds of one layer's step, averaged over ``steps``, for tokens routed to
    ``ids`` int ``[T', k]`` (-1 none) under ``expert_to_device`` int ``[N]``."""
    kernel = sending_rule(setting.workload.kernel, topology)
    served = np.where(ids >= 0, expert_to_device[np.maximum(ids, 0)], -1)
    traffic = rank_traffic(served, ids, steps.step, steps.source, steps.num_steps, topology, kernel)
    every = np.ones(steps.num_steps, bool)  # sampled steps are full already
    cost = StepCost.from_counts({f: c[None] for f, c in traffic.items()}, every, 1.0, steps.num_steps)
    return step_time(cost, setting.shape, setting.profile, setting.workload.kernel).moe(setting.overlap)


def search_layer(
    expert_to_device: np.ndarray,
    ids: np.ndarray,
    steps: SampledSteps,
    topology: Topology,
    setting: StepSetting,
    evaluations: int,
    seed: int,
) -> tuple[np.ndarray, float, float]:
    """The layer's placement after the search, int64 ``[N]``, and its estimated seconds before and
    after. ``ids``: int ``[T', k]``, the sampled tokens' experts in this layer."""
    placed = np.array(expert_to_device, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    start = best = layer_step_seconds(placed, ids, steps, topology, setting)
    used = 0
    while used < evaluations:
        pairs = rng.integers(0, topology.num_experts, (SWAPS_PER_ROUND, 2))
        pairs = pairs[placed[pairs[:, 0]] != placed[pairs[:, 1]]][: evaluations - used]
        if pairs.shape[0] == 0:  # every expert on one device: nothing to swap
            break
        found = None
        for a, b in pairs:
            placed[[a, b]] = placed[[b, a]]
            seconds = layer_step_seconds(placed, ids, steps, topology, setting)
            placed[[a, b]] = placed[[b, a]]
            if seconds < best:
                best, found = seconds, (a, b)
        used += pairs.shape[0]
        if found is not None:
            placed[list(found)] = placed[list(found[::-1])]
    return placed, start, best


def step_search(
    placement: Placement,
    trace: Trace,
    setting: StepSetting,
    evaluations: int,
    seed: int = 0,
    orders: int = 4,
    max_steps: int = 64,
    max_tokens: int = 1 << 19,
    executor: Executor | None = None,
    on_layer: Callable[[], None] | None = None,
) -> Placement:
    """``placement`` with every layer searched (``evaluations`` swaps tried a layer) against the
    step replayed from ``trace``, the calibration trace (at most ``max_steps`` steps sampled, and
    at most ``max_tokens`` tokens: each swap replays them all); each layer's estimate before and after
    goes into its solver report. Layers run on ``executor`` when given; ``on_layer`` is called as
    each finishes (progress)."""
    if placement.redundant_slots:
        raise MoeplaceError("the step search places one copy of each expert: plan without redundant slots")
    topology = placement.topology
    step_tokens = setting.workload.batch * topology.num_devices
    max_steps = max(1, min(max_steps, max_tokens // step_tokens))  # each swap replays them all
    steps = sample_steps(trace.doc_offsets, topology.num_devices, setting, orders, max_steps, seed)
    rows = np.sort(steps.tokens)
    order = np.argsort(steps.tokens, kind="stable")
    sampled = np.asarray(trace.topk_ids[rows])  # ascending rows: a memory-mapped trace reads in order
    steps = SampledSteps(rows, steps.step[order], steps.source[order], steps.num_steps)
    jobs = [
        (
            layer.expert_to_device,
            sampled[:, i, :],  # int16 until its layer is searched: memory stays near the sample's
            steps,
            topology,
            setting,
            evaluations,
            seed + i,
        )
        for i, layer in enumerate(placement.layers)
    ]
    results = []
    for result in (map if executor is None else executor.map)(search_layer, *zip(*jobs, strict=True)):
        results.append(result)
        if on_layer is not None:
            on_layer()
    layers = tuple(
        dataclasses.replace(
            layer,
            expert_to_device=placed,
            solver_report=layer.solver_report
            | {
                "step_search": {
                    "evaluations": evaluations,
                    "seconds_before": before,
                    "seconds_after": after,
                    "note": "the solver's figures in this report are of the placement before the search",
                }
            },
        )
        for layer, (placed, before, after) in zip(placement.layers, results, strict=True)
    )
    return dataclasses.replace(
        placement,
        layers=layers,
        options=placement.options
        | {"step_search": {"evaluations": evaluations, "orders": orders, "steps": steps.num_steps}},
    )


@dataclasses.dataclass(frozen=True)
class SearchRecord:
    """What ``step_search`` recorded in a placement: the steps it sampled, and the step estimated
    on them before and after its swaps, in seconds summed over layers."""

    steps: int
    seconds_before: float
    seconds_after: float


def search_record(placement: Placement) -> SearchRecord:
    """The ``SearchRecord`` of a placement ``step_search`` returned (or read back from its file)."""
    layers = [layer.solver_report["step_search"] for layer in placement.layers]
    return SearchRecord(
        placement.options["step_search"]["steps"],
        sum(layer["seconds_before"] for layer in layers),
        sum(layer["seconds_after"] for layer in layers),
    )

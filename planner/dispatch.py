"""Which device serves each (token, expert) when experts have replicas: the dispatch policy.

Physical slot p holds logical expert ``physical_to_logical[p]`` on device ``p // slots_per_device``.
An expert with one slot is served there. For an expert with several replicas a token takes the
replica on a device it already touches (through its other experts, or a replica chosen for an
earlier one of its experts), the least-loaded such device if several; otherwise the replica on
the least-loaded device. Experts are resolved in top-k order. "Least-loaded" is applied a batch
at a time: loads start from the batch's single-replica traffic, and the tokens that must pick
among an expert's replicas are split over them so that the device loads come out as even as
possible (water-filling), which is where per-token least-loaded choice converges. Deterministic.
"""

from __future__ import annotations

import bisect

import numpy as np


def replica_devices(physical_to_logical: np.ndarray, num_experts: int, slots_per_device: int) -> np.ndarray:
    """Devices holding each expert, int64 ``[N, R_max]`` ascending and distinct, ``-1`` padded."""
    device = np.arange(physical_to_logical.shape[0]) // slots_per_device
    return replica_table(physical_to_logical, device, num_experts)


def replica_table(experts: np.ndarray, devices: np.ndarray, num_experts: int) -> np.ndarray:
    """``replica_devices`` from (expert, device) pairs ``[P]`` each (every expert in one at least)."""
    order = np.lexsort((devices, experts))
    experts, devices = experts[order], devices[order]
    keep = np.ones(experts.shape[0], bool)  # two slots of one expert on one device serve as one
    keep[1:] = (experts[1:] != experts[:-1]) | (devices[1:] != devices[:-1])
    experts, devices = experts[keep], devices[keep]
    first = np.searchsorted(experts, np.arange(num_experts))
    rank = np.arange(experts.shape[0]) - first[experts]
    table = np.full((num_experts, max(int(rank.max()) + 1, 1)), -1, np.int64)
    table[experts, rank] = devices
    return table


def dispatch(
    topk_ids: np.ndarray,
    weights: np.ndarray,
    replicas: np.ndarray,
    num_devices: int,
    load: np.ndarray | None = None,
) -> np.ndarray:
    """Device serving each selected expert, int64 ``[T, k]`` (``-1`` where no expert; a
    transposed view: the work runs slot by slot over contiguous ``[k, T]`` rows).

    ``topk_ids``: int ``[T, k]``; ``weights``: float ``[T]`` tokens each row stands for (1 for a
    trace, set counts for distinct top-k sets: whole numbers, so every load is an exact sum in
    any order); ``replicas``: ``replica_devices``; ``load``: float ``[D]`` device load before
    this batch (updated in place when given).
    """
    by_slot = np.asarray(topk_ids).T.astype(np.int64, order="C")  # [k, T]: a slot's experts contiguous
    weights = np.asarray(weights, dtype=np.float64)
    load = np.zeros(num_devices) if load is None else load
    first_copy = np.append(replicas[:, 0], -1)  # [N + 1]: an absent expert (-1) has no device
    if replicas.shape[1] == 1:  # no replicas: a plain lookup
        chosen = first_copy[by_slot]
        load += _device_load(chosen, weights, num_devices)
        return chosen.T
    copies = np.append((replicas >= 0).sum(axis=1), 0)  # [N + 1], an absent expert (-1) has none
    many = copies[by_slot] > 1  # [k, T] needs a choice
    chosen = np.where(many, -1, first_copy[by_slot])  # [k, T]
    load += _device_load(chosen, weights, num_devices)
    rows, width = by_slot.shape[1], num_devices + 1
    # which devices each token touches, flat [T * (D + 1)]: a -1 (no device yet) lands in the column
    # D of the row before (or of the last row), a padding column never read as a device
    touched = np.zeros(rows * width, bool)
    row_start = np.arange(rows) * width
    touched[(chosen + row_start).ravel()] = True
    replica_columns = np.ascontiguousarray(replicas.T)  # [R, N]: each expert's r-th device
    replica_lists = None
    for slot_ids, slot_many, slot_chosen in zip(by_slot, many, chosen, strict=True):
        need = np.flatnonzero(slot_many)
        if not need.size:
            continue
        starts, experts = row_start[need], slot_ids[need]
        # a touched replica: the least-loaded of them (the first on a tie), -1 if none
        pick, pick_load = np.full(need.size, -1), np.full(need.size, np.inf)
        for column in replica_columns:
            device = column[experts]
            hit = touched[starts + device] & (device >= 0)
            device_load = np.where(hit, load[device], np.inf)
            better = device_load < pick_load
            pick, pick_load = np.where(better, device, pick), np.minimum(device_load, pick_load)
        near = pick >= 0
        slot_chosen[need[near]] = pick[near]
        load += np.bincount(pick[near], weights=weights[need[near]], minlength=num_devices)
        far = need[~near]
        if far.size:
            experts = slot_ids[far]
            # by expert (a radix sort: ids fit int16, trace.MAX_EXPERTS)
            order = np.argsort(experts.astype(np.int16), kind="stable")
            far, experts = far[order], experts[order]
            if replica_lists is None:
                replica_lists = [[d for d in row if d >= 0] for row in replicas.tolist()]
            slot_chosen[far] = _water_fill(experts, weights[far], replica_lists, load)
        touched[row_start[need] + slot_chosen[need]] = True
    return chosen.T


def _device_load(chosen: np.ndarray, weights: np.ndarray, num_devices: int) -> np.ndarray:
    """Weight each device serves, float ``[D]``, for devices ``chosen`` int ``[k, T]`` (-1: none)
    of rows weighing ``weights`` ``[T]`` (token counts: the sums are exact in any order)."""
    flat = chosen.ravel() + 1  # bin 0 takes the -1s
    return np.bincount(flat, weights=np.tile(weights, chosen.shape[0]), minlength=num_devices + 1)[1:]


def _water_fill(
    experts: np.ndarray, weights: np.ndarray, replica_lists: list, load: np.ndarray
) -> np.ndarray:
    """Device of each row, int64 ``[n]``, for rows of ``weights`` float ``[n]`` that choose among
    the replicas of ``experts`` int ``[n]`` (grouped by expert): each expert in turn splits its
    rows over its devices, in order, so that their loads end as even as possible; updates ``load``.

    Per expert, with weight W over devices of loads l: the final level h solves
    sum max(h - l, 0) = W; device j takes share max(h - l_j, 0), and a row goes to the device
    whose cumulative share its middle falls in. Scalar work per expert.
    """
    boundaries = np.flatnonzero(np.diff(experts)) + 1
    starts = np.concatenate([[0], boundaries]).tolist()
    ends = [*boundaries.tolist(), experts.shape[0]]
    cumulative = np.concatenate([[0.0], np.cumsum(weights)])  # exact: weights count tokens
    # each row's middle, measured from its expert's first row
    base = np.repeat(cumulative[starts], np.subtract(ends, starts))
    middle = (cumulative[1:] - base) - weights / 2
    levels = load.tolist()
    picked_devices, picked_counts = [], []
    for expert, start, end in zip(experts[starts].tolist(), starts, ends, strict=True):
        devices = replica_lists[expert]
        total = cumulative[end] - cumulative[start]
        height, filled = 0.0, 0.0
        for count, level in enumerate(sorted(levels[d] for d in devices), 1):
            filled += level
            if (level_height := (total + filled) / count) >= level:
                height = level_height
        cuts, edge = [start], 0.0
        for d in devices[:-1]:
            edge += max(height - levels[d], 0.0)
            cuts.append(bisect.bisect_left(middle, edge, start, end))  # rows whose middle is below
        cuts.append(end)
        for d, first, last in zip(devices, cuts[:-1], cuts[1:], strict=True):
            levels[d] += float(cumulative[last] - cumulative[first])
            picked_devices.append(d)
            picked_counts.append(last - first)
    load[:] = levels
    return np.repeat(np.array(picked_devices, np.int64), picked_counts)

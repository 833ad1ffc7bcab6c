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
    """Device serving each selected expert, int64 ``[T, k]`` (``-1`` where no expert).

    ``topk_ids``: int ``[T, k]``; ``weights``: float ``[T]`` tokens each row stands for (1 for a
    trace, set counts for distinct top-k sets); ``replicas``: ``replica_devices``; ``load``:
    float ``[D]`` device load before this batch (updated in place when given).
    """
    ids = np.asarray(topk_ids, dtype=np.int64)
    valid = ids >= 0
    weights = np.asarray(weights, dtype=np.float64)
    load = np.zeros(num_devices) if load is None else load
    if replicas.shape[1] == 1:  # no replicas: a plain lookup
        chosen = np.where(valid, replicas[np.maximum(ids, 0), 0], -1)
        load += np.bincount(
            chosen[valid],
            weights=np.broadcast_to(weights[:, None], chosen.shape)[valid],
            minlength=num_devices,
        )
        return chosen
    copies = (replicas >= 0).sum(axis=1)  # [N]
    safe = np.maximum(ids, 0)
    many = valid & (copies[safe] > 1)  # [T, k] needs a choice
    chosen = np.where(valid & ~many, replicas[safe, 0], -1)
    fixed = chosen >= 0
    load += np.bincount(
        chosen[fixed], weights=np.broadcast_to(weights[:, None], chosen.shape)[fixed], minlength=num_devices
    )
    rows = np.arange(ids.shape[0])
    touched = np.zeros((ids.shape[0], num_devices + 1), bool)  # column D absorbs the -1 padding
    touched[rows[:, None], chosen] = True
    for slot in range(ids.shape[1]):
        need = np.flatnonzero(many[:, slot])
        if not need.size:
            continue
        cand = replicas[ids[need, slot]]  # [n, R]
        hit = touched[need[:, None], cand] & (cand >= 0)
        near = hit.any(axis=1)
        # a touched replica: the least-loaded of them
        score = np.where(hit, load[np.maximum(cand, 0)], np.inf)
        pick = cand[np.arange(need.size), np.argmin(score, axis=1)]
        chosen[need[near], slot] = pick[near]
        load += np.bincount(pick[near], weights=weights[need[near]], minlength=num_devices)
        far = need[~near]
        far = far[np.argsort(ids[far, slot], kind="stable")]  # grouped by expert, token order within
        experts, starts = np.unique(ids[far, slot], return_index=True)
        for expert, tokens in zip(experts, np.split(far, starts[1:]) if far.size else [], strict=True):
            devices = replicas[expert][replicas[expert] >= 0]
            chosen[tokens, slot] = _water_fill(devices, weights[tokens], load)
        touched[need[:, None], chosen[need, slot][:, None]] = True
    return chosen


def _water_fill(devices: np.ndarray, weights: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Split rows of ``weights`` [n] over ``devices`` so their loads end as even as possible;
    updates ``load`` and returns the device of each row, in order."""
    total = weights.sum()
    level = np.sort(load[devices])
    # the final level h: sum over devices of max(h - load, 0) = total
    filled = np.cumsum(level)
    count = np.arange(1, level.shape[0] + 1)
    heights = (total + filled) / count
    usable = np.flatnonzero(heights >= level)[-1]
    share = np.maximum(heights[usable] - load[devices], 0.0)  # [r] weight each device takes
    bounds = np.cumsum(share)
    position = np.cumsum(weights) - weights / 2  # each row goes where its middle falls
    which = np.minimum(np.searchsorted(bounds, position, side="right"), devices.shape[0] - 1)
    picked = devices[which]
    load += np.bincount(picked, weights=weights, minlength=load.shape[0])
    return picked

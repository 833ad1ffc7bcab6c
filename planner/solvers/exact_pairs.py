"""Exact re-split of two devices' experts on the exact fan-out, under the load caps.

Only the sets touching the pair's 2S experts matter, and only through which of those experts they
hold: each set becomes a bitmask over the 2S experts, and equal masks are merged with their token
counts summed. A split costs, for every mask, one device per side the mask has an expert on. When
the pair is small (2S <= 20) every split is scored at once: a split's cost is 2W - f(first side)
- f(second side), with f(X) the weight of member sets inside X, and a sum-over-subsets transform
gives f for all 2^2S sides in O(2S 2^2S). Larger pairs go to CP-SAT, one worker, under a
deterministic time limit. Either way only a strictly better split is returned.
"""

from __future__ import annotations

import itertools
from functools import cache
from math import comb
from typing import TYPE_CHECKING

import numpy as np

from moeplace.calibrate.stats import TopkSets, unique_rows
from moeplace.planner.solvers.caps import LoadCaps
from moeplace.planner.solvers.sat import even_split, run

if TYPE_CHECKING:
    from scipy import sparse

MAX_ENUMERATED_SIZE = 20  # experts in a pair scored exhaustively (2^20 subset sums)


def resplit_pair(
    topk_sets: TopkSets,
    caps: LoadCaps,
    device: np.ndarray,
    a: int,
    b: int,
    time_limit: float,
    incidence: sparse.csr_matrix | None = None,
) -> tuple[np.ndarray | None, float]:
    """A strictly better split of devices a and b, or None; and the CP-SAT time used (0 if enumerated).

    ``device``: int ``[N]``, the current placement. The result keeps every other expert where it is.
    ``incidence``: optional ``[N, H]`` CSR, 1 where an expert is in a set; with it only the sets
    holding the pair's experts are read, not all of them (at 256 experts, ~1% of the sets).
    """
    experts = np.flatnonzero((device == a) | (device == b))
    if experts.shape[0] > MAX_ENUMERATED_SIZE and time_limit <= 0:
        return None, 0.0  # CP-SAT's budget is spent: building its model would cost minutes at scale
    if incidence is not None:
        rows, hits = np.unique(incidence[experts].indices, return_counts=True)
        rows = rows[hits >= 2]
        topk_sets = TopkSets(topk_sets.sets[rows], topk_sets.counts[rows])
    members, weights = _pair_sets(topk_sets, experts, device.shape[0])
    on_first = device[experts] == device[experts[0]]  # expert 0's side first
    current = float(_costs(members, weights, on_first[None, :])[0])
    load = caps.scenario_load[:, experts].astype(np.int64)  # [K, 2S]
    if experts.shape[0] <= MAX_ENUMERATED_SIZE:
        side, used = _enumerate(members, weights, load, caps.cap, current), 0.0
    else:
        side, used = _cp_sat(members, weights, load, caps.cap, on_first, current, time_limit)
    if side is None:
        return None, used
    expert_to_device = device.copy()
    first, other = device[experts[0]], (b if device[experts[0]] == a else a)
    expert_to_device[experts] = np.where(side, first, other)
    return expert_to_device, used


def _pair_sets(topk_sets: TopkSets, experts: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Sets with two or more of ``experts``, as members among them, merged: bool ``[M, 2S]``, ``[M]``.

    Sets with one member add the same one device to every split, so they are left out.
    """
    position = np.full(num_experts + 1, -1)  # index -1 (padding) stays -1
    position[experts] = np.arange(experts.shape[0])
    slot = position[topk_sets.sets.astype(np.int64)]  # [H, k]
    rows = np.zeros((slot.shape[0], experts.shape[0] + 1), bool)
    rows[np.arange(slot.shape[0])[:, None], slot] = True  # slot -1 lands in the spare last column
    rows = rows[:, :-1]
    touching = rows.sum(axis=1) >= 2  # a set with one member here costs one device however we split
    members, inverse = unique_rows(rows[touching].astype(np.int16))  # np.unique(axis=0), faster
    return members.astype(bool), np.bincount(inverse, weights=topk_sets.counts[touching])


def _costs(members: np.ndarray, weights: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """Fan-out of each split: ``sides`` bool ``[splits, 2S]`` (True = first device) -> ``[splits]``."""
    m = members.astype(np.int32)
    on_first = (sides.astype(np.int32) @ m.T) > 0
    on_second = ((~sides).astype(np.int32) @ m.T) > 0
    return (on_first.astype(np.float64) + on_second) @ weights


@cache
def _splits(size: int) -> np.ndarray:
    """All splits of ``size`` experts into halves, expert 0 on the first side: bool ``[splits, size]``."""
    sides = np.zeros((comb(size - 1, size // 2 - 1), size), bool)
    sides[:, 0] = True
    for row, chosen in enumerate(itertools.combinations(range(1, size), size // 2 - 1)):
        sides[row, list(chosen)] = True
    return sides


def _enumerate(members, weights, load, cap, current) -> np.ndarray | None:
    size = load.shape[1]
    sides = _splits(size)
    bit = np.left_shift(1, np.arange(size, dtype=np.int64))
    inside = np.zeros(1 << size)  # inside[X] = weight of member sets within side X (after the transform)
    np.add.at(inside, members.astype(np.int64) @ bit, weights)
    for i in range(size):  # sum over subsets, one bit at a time
        view = inside.reshape(-1, 2, 1 << i)
        view[:, 1, :] += view[:, 0, :]
    first = sides.astype(np.int64) @ bit
    cost = 2 * weights.sum() - inside[first] - inside[((1 << size) - 1) ^ first]
    first_load = sides.astype(np.int64) @ load.T  # [splits, K]
    fits = (first_load <= cap).all(axis=1) & (load.sum(axis=1) - first_load <= cap).all(axis=1)
    cost = np.where(fits & (cost < current - 1e-9), cost, np.inf)
    best = int(np.argmin(cost))
    return sides[best] if np.isfinite(cost[best]) else None


def _cp_sat(members, weights, load, cap, on_first, current, time_limit) -> tuple[np.ndarray | None, float]:
    size = load.shape[1]
    model, x = even_split(load, cap, "x")
    terms = []
    for row, weight in zip(members, weights.tolist(), strict=True):
        on_a, on_b = model.new_bool_var(""), model.new_bool_var("")
        for i in np.flatnonzero(row).tolist():
            model.add_implication(x[i], on_a)
            model.add_implication(x[i].negated(), on_b)
        terms.append(round(weight) * (on_a + on_b))
    model.add(sum(terms) <= round(current) - 1)  # strictly better only
    model.minimize(sum(terms))
    for i in range(size):
        model.add_hint(x[i], bool(on_first[i]))
    _, found, solver = run(model, time_limit)
    if not found:
        return None, solver.deterministic_time
    return np.array([bool(solver.value(v)) for v in x]), solver.deterministic_time

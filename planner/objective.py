"""Placement objectives: exact fan-out (what users pay for) and the pairwise proxy."""

from __future__ import annotations

import numpy as np


def colocated_weight(coact: np.ndarray, expert_to_device: np.ndarray) -> int:
    """Co-activation counts summed over expert pairs on the same device (each pair once).

    ``coact``: int ``[N, N]`` symmetric, zero diagonal; ``expert_to_device``: int ``[N]``.
    Each co-located pair that fires together saves that token one device, up to overlaps of three.
    """
    same = expert_to_device[:, None] == expert_to_device[None, :]
    return int(np.triu(np.where(same, coact, 0), 1).sum())


def token_devices(topk_ids: np.ndarray, expert_to_device: np.ndarray) -> np.ndarray:
    """Device of each selected expert, int64 ``[T, k]``; ``-1`` where the slot has no expert."""
    ids = np.asarray(topk_ids, dtype=np.int64)
    return np.where(ids >= 0, expert_to_device[np.maximum(ids, 0)], -1)


def devices_per_token(topk_ids: np.ndarray, expert_to_device: np.ndarray) -> np.ndarray:
    """Distinct devices each token is dispatched to, int64 ``[T]`` (0 for a token with no expert)."""
    return distinct_per_row(token_devices(topk_ids, expert_to_device))


def distinct_per_row(values: np.ndarray) -> np.ndarray:
    """Distinct non-negative values in each row of ``values`` int ``[T, k]``, int64 ``[T]``."""
    if values.shape[1] > 12:  # comparisons grow as k^2: sort the rows instead
        ordered = np.sort(values, axis=1)
        new = ordered >= 0
        new[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
        return new.sum(axis=1)
    # for small k, k(k-1)/2 column comparisons beat a sort of every row (3x at k = 8)
    columns = np.ascontiguousarray(values.T)  # [k, T]
    count = np.zeros(values.shape[0], np.int64)
    for j, column in enumerate(columns):
        new = column >= 0
        for earlier in columns[:j]:
            new &= column != earlier
        count += new
    return count


def fanout(topk_sets, expert_to_device: np.ndarray) -> int:
    """Exact objective: token-weighted distinct devices, sum_h counts[h] * devices(sets[h])."""
    return int(devices_per_token(topk_sets.sets, expert_to_device) @ topk_sets.counts)

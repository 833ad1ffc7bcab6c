"""The pairwise proxy objective that the greedy and CP-SAT solvers maximize."""

from __future__ import annotations

import numpy as np


def colocated_weight(coact: np.ndarray, expert_to_device: np.ndarray) -> int:
    """Co-activation counts summed over expert pairs on the same device (each pair once).

    ``coact``: int ``[N, N]`` symmetric, zero diagonal; ``expert_to_device``: int ``[N]``.
    Each co-located pair that fires together saves that token one device, up to overlaps of three.
    """
    same = expert_to_device[:, None] == expert_to_device[None, :]
    return int(np.triu(np.where(same, coact, 0), 1).sum())

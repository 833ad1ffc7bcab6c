"""Physical slots: no device may hold two copies of one expert.

Serving engines keep one copy of an expert per device. SGLang (with an all-to-all backend) loads
weights into one local slot per expert, so a second slot of the same expert on that device never
receives weights while other ranks' static dispatch may point at it; vllm-ascend's ``log2phy`` map
strides by the distinct experts of rank 0 and points at wrong slots. Every solver and replica step
therefore places the copies of an expert on distinct devices, and every placement is checked here.
"""

from __future__ import annotations

import numpy as np


def copies_fit(copies: np.ndarray, holds: np.ndarray, room: np.ndarray) -> bool:
    """Can ``copies`` more slots of each expert still go to devices with room, none to a device
    that holds (or gets) that expert already?

    ``copies``: int ``[N]`` copies still to place; ``holds``: bool ``[D, N]`` device already holds
    expert; ``room``: int ``[D]`` free slots per device. A max flow source -> expert (capacity:
    copies) -> device (1, where the device does not hold it) -> sink (room): they fit iff it
    saturates every copy.
    """
    experts = np.flatnonzero(copies > 0)
    need = int(copies[experts].sum())
    if need == 0:
        return True
    if need > int(room.sum()) or copies[experts].max() > np.count_nonzero(room > 0):
        return False
    n, d = experts.shape[0], room.shape[0]
    allowed_device, allowed_expert = np.nonzero(~holds[:, experts] & (room[:, None] > 0))
    # nodes: 0 source, 1..n experts, n+1..n+d devices, n+d+1 sink
    tail = np.concatenate([np.zeros(n, np.int64), 1 + allowed_expert, n + 1 + np.arange(d)])
    head = np.concatenate([1 + np.arange(n), n + 1 + allowed_device, np.full(d, n + d + 1)])
    capacity = np.concatenate([copies[experts], np.ones(allowed_device.shape[0], np.int64), room])
    size = n + d + 2
    from scipy import sparse  # imported here: it is slow to import, and most runs need no replicas
    from scipy.sparse.csgraph import maximum_flow

    graph = sparse.csr_matrix((capacity.astype(np.int32), (tail, head)), shape=(size, size))
    return int(maximum_flow(graph, 0, size - 1).flow_value) == need


def repeated_copy(physical_to_logical: np.ndarray, slots_per_device: int) -> tuple[int, int, int] | None:
    """The first ``(device, expert, slots)`` where a device holds ``slots`` > 1 copies of one
    expert, or None. ``physical_to_logical``: int ``[P]``, slot p on device ``p // slots_per_device``."""
    rows = np.asarray(physical_to_logical).reshape(-1, slots_per_device)
    ordered = np.sort(rows, axis=1)
    repeat = ordered[:, 1:] == ordered[:, :-1]
    if not repeat.any():
        return None
    device, column = np.argwhere(repeat)[0]
    expert = int(ordered[device, column])
    return int(device), expert, int(np.count_nonzero(rows[device] == expert))

"""Load records of several workloads, whatever engine wrote them, as one statistics file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.trace import TraceMeta
from moeplace.errors import file_error


def workload_statistics(
    paths: Sequence[Path], labels: Sequence[str], loads: Sequence[np.ndarray], meta: TraceMeta
) -> Statistics:
    """Load-only statistics of one workload per distinct label, in order of appearance.

    ``loads``: int64 ``[L, N]`` per source (``meta``'s MoE layers); sources with one label are
    shards of one workload and sum. A workload that counts nothing at some MoE layer is refused,
    naming its first source: its share of that layer is undefined.
    """
    order = list(dict.fromkeys(labels))
    workload_load = np.zeros((len(order), *loads[0].shape), np.int64)
    for label, load in zip(labels, loads, strict=True):
        workload_load[order.index(label)] += load
    for label, load in zip(order, workload_load, strict=True):
        empty = np.flatnonzero(load.sum(axis=1) == 0)
        if empty.size:
            shard = paths[list(labels).index(label)]
            raise file_error(
                shard, f"workload {label!r} counts nothing at MoE layer {meta.layer_ids[empty[0]]}"
            )
    tokens = int(sum(-(-load.sum(axis=1).max() // meta.top_k) for load in workload_load))  # k a token
    num_layers, n = workload_load.shape[1:]
    return Statistics(
        meta,
        workload_load.sum(axis=0),
        None,
        np.zeros((num_layers, 0, n), np.int64),
        tokens,
        0,
        0,
        workloads=tuple(order),
        workload_load=workload_load,
    )

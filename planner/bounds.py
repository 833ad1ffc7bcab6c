"""Lower bounds on a layer's total fan-out: how far from the best possible a placement can be.

All are in token-devices (divide by the tokens for dev/token):

- ``slots``: a token needs at least ceil(|h| / slots) devices.
- ``pairs``: a device holding m of a token's experts saves m - 1 <= C(m, 2) devices, so the
  fan-out is at least (pins) - (co-located co-activation), and co-located co-activation is at most
  half the sum over experts of its slots - 1 heaviest partners (or CP-SAT's proven bound on it,
  from ``ortools``).
- ``cp-sat``: the ``exact`` solver's proven lower bound on the fan-out itself, where it ran.
"""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.topology import Topology


def fanout_lower_bounds(
    stats: LayerStats,
    topology: Topology,
    colocated_upper: float | None = None,
    proven_fanout: float | None = None,
) -> dict[str, float]:
    """``{"slots", "pairs", "cp-sat", "best"}`` for a layer with top-k sets (pairs with co-activation,
    cp-sat given ``proven_fanout``)."""
    sets, counts = stats.topk_sets.sets, stats.topk_sets.counts
    size = (sets >= 0).sum(axis=1)
    slots = topology.slots_per_device
    bounds = {"slots": float(np.ceil(size / slots) @ counts)}
    if stats.coact is not None:
        partners = np.sort(stats.coact, axis=1)[:, ::-1][:, : slots - 1].sum() / 2
        colocated = partners if colocated_upper is None else min(partners, colocated_upper)
        bounds["pairs"] = float(size @ counts - colocated)
    if proven_fanout is not None:
        bounds["cp-sat"] = float(proven_fanout)
    bounds["best"] = max(bounds.values())
    return bounds

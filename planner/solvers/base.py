"""The one interface every solver implements.

``solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution``: one MoE
layer in, one expert -> device map out. Pure: the same arguments give the same answer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.topology import Topology


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """Knobs shared by all solvers; each solver reads the ones it needs.

    Attributes:
        load_tolerance: eps; capped solvers keep every device's load <= (1 + eps) x mean load.
        seed: for solvers with randomness (``random``, CP-SAT's search).
        time_limit: CP-SAT's budget per layer, in deterministic seconds (reproducible).
        search_steps: tabu-search swaps of the exact local search, per layer.
        refine: run the exact local search after the solver (``refine`` and ``hypergraph`` always do).
    """

    load_tolerance: float = 0.05
    seed: int = 0
    time_limit: float = 2.0
    search_steps: int = 2000
    refine: bool = False


@dataclasses.dataclass(frozen=True)
class Solution:
    """``expert_to_device``: int64 ``[N]``, device of each expert. ``info``: solver's report (YAML-safe)."""

    expert_to_device: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Solver(Protocol):
    def __call__(self, stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution: ...

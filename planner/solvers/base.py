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
        node_cost: extra cost of a token's dispatch to a node, in devices: the exact local search
            minimizes devices/token + node_cost x nodes/token (0: nodes do not matter).
    """

    load_tolerance: float = 0.05
    seed: int = 0
    time_limit: float = 2.0
    search_steps: int = 2000
    refine: bool = False
    node_cost: float = 0.0


@dataclasses.dataclass(frozen=True)
class Solution:
    """``expert_to_device``: int64 ``[N]``, device of each expert (with replicas: of its first slot).
    ``info``: solver's report (YAML-safe). ``physical_to_logical``: int64 ``[N + R]`` with replicas:
    the expert in each physical slot, slot p on device ``p // slots_per_device``; else None."""

    expert_to_device: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    physical_to_logical: np.ndarray | None = None

    @classmethod
    def from_slots(cls, physical_to_logical: np.ndarray, topology: Topology, info: dict) -> Solution:
        slot_device = np.arange(topology.num_physical) // topology.slots_per_device
        home = np.full(topology.num_experts, -1, np.int64)
        home[physical_to_logical[::-1]] = slot_device[::-1]  # the last write wins: the first slot
        return cls(home, info, np.asarray(physical_to_logical, dtype=np.int64))


class Solver(Protocol):
    def __call__(self, stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution: ...

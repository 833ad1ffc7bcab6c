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

# The default load tolerance of plan, compare, demo and the API: on the shared traces capped plans
# at eps 0.1 keep held-out max/mean load at or below 1.10, where measured serving time is still
# flat, with most of the traffic cut (docs/solvers.md, "The default load tolerance")
DEFAULT_LOAD_TOLERANCE = 0.1


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
        routing_groups: G of group-limited routing (1: none); ``plan`` sets it from the statistics.
        group_mode: how placements keep groups whole (``moeplace.planner.groups``): nodes,
            permutable or free.
    """

    load_tolerance: float = DEFAULT_LOAD_TOLERANCE
    seed: int = 0
    time_limit: float = 2.0
    search_steps: int = 2000
    refine: bool = False
    node_cost: float = 0.0
    routing_groups: int = 1
    group_mode: str = "nodes"


@dataclasses.dataclass(frozen=True)
class Solution:
    """``expert_to_device``: int64 ``[N]``, device of each expert (with replicas: of its first slot).
    ``info``: the solver's own report (YAML-safe, written to the placement file as it is).
    ``physical_to_logical``: int64 ``[N + R]`` with replicas: the expert in each physical slot, slot
    p on device ``p // slots_per_device``; else None.

    What other code reads of a solution is a field: ``fanout``, the fit fan-out (token-device
    pairs over the calibration sets) where the solver computed it; ``bound_fanout``, a proven lower
    bound on it; ``bound_colocated_coactivation``, a proven upper bound on the co-activation that
    can share a device. They go into the placement file's ``solver_report`` beside ``info``.
    """

    expert_to_device: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    physical_to_logical: np.ndarray | None = None
    fanout: float | None = None
    bound_fanout: int | None = None
    bound_colocated_coactivation: int | None = None

    @property
    def solver_report(self) -> dict[str, Any]:
        """``info`` and the figures above that the solver set: what the placement file records as
        the layer's ``solver_report`` (``LayerPlacement.solver_report``)."""
        figures = ("fanout", "bound_fanout", "bound_colocated_coactivation")
        return self.info | {name: getattr(self, name) for name in figures if getattr(self, name) is not None}

    @classmethod
    def from_slots(cls, physical_to_logical: np.ndarray, topology: Topology, info: dict) -> Solution:
        slot_device = np.arange(topology.num_physical) // topology.slots_per_device
        home = np.full(topology.num_experts, -1, np.int64)
        home[physical_to_logical[::-1]] = slot_device[::-1]  # the last write wins: the first slot
        return cls(home, info, np.asarray(physical_to_logical, dtype=np.int64))


class Solver(Protocol):
    def __call__(self, stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution: ...


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    """What a solver needs and does, declared once beside its ``solve`` (``SPEC`` in its module)
    and read from there by the planner, the comparison and the command line.

    Attributes:
        solve: the solver.
        summary: what it does, in a line (``--help`` lists it).
        uses_coactivation: reads co-activation counts; False: expert load alone (load-only
            statistics, as an engine's stat dump gives) suffices.
        capped: keeps every device's load under the load tolerance's cap; False: ignores it.
        needs_sets: reads the distinct top-k sets of a per-token trace.
        places_replicas: places redundant slots itself; any other solver's placement is followed
            by co-activation-aware replica placement.
        refines: ends with the exact local search itself (``--refine`` adds nothing).
        compared_by_default: in ``compare``'s default solver list.
        balances_workloads: reads each workload's load (``LayerStats.workload_share``), and routing
            groups go to nodes by every workload's load; the others see the workloads pooled.
    """

    solve: Solver
    summary: str
    uses_coactivation: bool = True
    capped: bool = True
    needs_sets: bool = False
    places_replicas: bool = False
    refines: bool = False
    compared_by_default: bool = True
    balances_workloads: bool = False

"""Solver registry. Adding a solver: one module with ``solve`` (see ``base``) and one line here."""

from __future__ import annotations

from moeplace.planner.solvers import (
    cpsat,
    eplb,
    exact,
    frequency,
    greedy,
    greedy_capped,
    hypergraph,
    random,
    refine,
)
from moeplace.planner.solvers.base import Solution, Solver, SolverOptions
from moeplace.planner.solvers.frequency import frequency_placement

SOLVERS: dict[str, Solver] = {
    "random": random.solve,
    "frequency": frequency.solve,
    "greedy": greedy.solve,
    "greedy-capped": greedy_capped.solve,
    "ortools": cpsat.solve,
    "refine": refine.solve,
    "hypergraph": hypergraph.solve,
    "exact": exact.solve,
    "eplb": eplb.solve,
}

BASELINE = "frequency"
LOAD_ONLY_SOLVERS = ("random", "frequency", "eplb")  # the solvers that need no co-activation counts
UNCAPPED = ("random", "frequency", "greedy", "eplb")  # the solvers that ignore the load tolerance
REPLICATING = ("eplb",)  # the solvers that place replicas themselves; the others get ``add_replicas``
REFINED = ("refine", "hypergraph", "exact")  # the solvers that end with the exact local search themselves
# exact is for small layers only; eplb is frequency-balanced packing unless there are replicas
DEFAULT_SOLVERS = tuple(name for name in SOLVERS if name not in ("exact", "eplb"))

__all__ = [
    "BASELINE",
    "DEFAULT_SOLVERS",
    "LOAD_ONLY_SOLVERS",
    "REFINED",
    "REPLICATING",
    "SOLVERS",
    "UNCAPPED",
    "Solution",
    "Solver",
    "SolverOptions",
    "frequency_placement",
]

"""Solver registry. Adding a solver: one module with ``solve`` (see ``base``) and one line here."""

from __future__ import annotations

from moeplace.planner.solvers import (
    cpsat,
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
}

BASELINE = "frequency"
LOAD_ONLY_SOLVERS = ("random", "frequency")  # the solvers that need no co-activation counts
UNCAPPED = ("random", "frequency", "greedy")  # the solvers that ignore the load tolerance
REFINED = ("refine", "hypergraph", "exact")  # the solvers that end with the exact local search themselves
DEFAULT_SOLVERS = tuple(name for name in SOLVERS if name != "exact")  # exact is for small layers only

__all__ = [
    "BASELINE",
    "DEFAULT_SOLVERS",
    "LOAD_ONLY_SOLVERS",
    "REFINED",
    "SOLVERS",
    "UNCAPPED",
    "Solution",
    "Solver",
    "SolverOptions",
    "frequency_placement",
]

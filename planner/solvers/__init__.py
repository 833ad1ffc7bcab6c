"""Solver registry. Adding a solver: one module with ``solve`` (see ``base``) and one line here."""

from __future__ import annotations

from moeplace.planner.solvers import cpsat, frequency, greedy, greedy_capped, random
from moeplace.planner.solvers.base import Solution, Solver, SolverOptions
from moeplace.planner.solvers.frequency import frequency_placement

SOLVERS: dict[str, Solver] = {
    "random": random.solve,
    "frequency": frequency.solve,
    "greedy": greedy.solve,
    "greedy-capped": greedy_capped.solve,
    "ortools": cpsat.solve,
}

BASELINE = "frequency"
LOAD_ONLY_SOLVERS = ("random", "frequency")  # the solvers that need no co-activation counts

__all__ = [
    "BASELINE",
    "LOAD_ONLY_SOLVERS",
    "SOLVERS",
    "Solution",
    "Solver",
    "SolverOptions",
    "frequency_placement",
]

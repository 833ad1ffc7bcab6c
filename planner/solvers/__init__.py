"""Solver registry. Adding a solver: one module with ``solve`` and its ``SPEC`` (see ``base``),
and one line here."""

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
    robust,
)
from moeplace.planner.solvers.base import Solution, Solver, SolverOptions, SolverSpec

SOLVERS: dict[str, SolverSpec] = {
    "random": random.SPEC,
    "frequency": frequency.SPEC,
    "greedy": greedy.SPEC,
    "greedy-capped": greedy_capped.SPEC,
    "ortools": cpsat.SPEC,
    "refine": refine.SPEC,
    "hypergraph": hypergraph.SPEC,
    "exact": exact.SPEC,
    "eplb": eplb.SPEC,
    "robust": robust.SPEC,
}

BASELINE = "frequency"
DEFAULT_SOLVERS = tuple(name for name, spec in SOLVERS.items() if spec.compared_by_default)


def load_only_solvers() -> tuple[str, ...]:
    """The solvers that expert load alone suffices for."""
    return tuple(name for name, spec in SOLVERS.items() if not spec.uses_coactivation)


__all__ = [
    "BASELINE",
    "DEFAULT_SOLVERS",
    "SOLVERS",
    "Solution",
    "Solver",
    "SolverOptions",
    "SolverSpec",
    "load_only_solvers",
]

"""CP-SAT, set up one way for every model in the planner: one worker under a deterministic time
limit, so the same model gives the same answer and the limit holds. OR-Tools is imported on first
use: it takes longer to import than the command line takes to start."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ortools.sat.python import cp_model


def new_model() -> cp_model.CpModel:
    from ortools.sat.python import cp_model

    return cp_model.CpModel()


def run(
    model: cp_model.CpModel, time_limit: float, seed: int | None = None, **parameters
) -> tuple[str, bool, cp_model.CpSolver]:
    """Solve ``model`` within ``time_limit`` deterministic seconds (CP-SAT's own seed when ``seed``
    is None; ``parameters``: more of CP-SAT's). Returns (status name, whether a solution was
    found, the solver holding it: ``value``, ``best_objective_bound``, ``deterministic_time``)."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_deterministic_time = max(time_limit, 1e-3)
    if seed is not None:
        solver.parameters.random_seed = seed
    for name, value in parameters.items():
        setattr(solver.parameters, name, value)
    status = solver.solve(model)
    return solver.status_name(status), status in (cp_model.OPTIMAL, cp_model.FEASIBLE), solver


def even_split(scenario_load: np.ndarray, cap: np.ndarray, name: str) -> tuple[cp_model.CpModel, list]:
    """A model splitting m experts evenly over two devices: bool ``x[e]`` (named ``name`` + e),
    expert e on the first device; expert 0 there (the two devices are interchangeable); in every
    scenario each device's load within its cap. ``scenario_load`` int ``[K, m]``, ``cap`` ``[K]``.
    Returns (the model, ``x``)."""
    m = scenario_load.shape[1]
    model = new_model()
    x = [model.new_bool_var(f"{name}{e}") for e in range(m)]
    model.add(x[0] == 1)
    model.add(sum(x) == m // 2)
    for scenario, limit in zip(scenario_load, cap, strict=True):
        first = sum(int(scenario[e]) * x[e] for e in range(m))
        model.add(first <= int(limit))
        model.add(int(scenario.sum()) - first <= int(limit))
    return model, x


def canonical_devices(expert_to_device: np.ndarray) -> np.ndarray:
    """The same partition, int ``[N]``, with devices numbered in order of their lowest expert: the
    labelling the models' symmetry cut assumes (expert e on a device <= e)."""
    devices, first = np.unique(expert_to_device, return_index=True)
    rank = np.empty(devices.shape[0], np.int64)
    rank[np.argsort(first)] = np.arange(devices.shape[0])
    return rank[np.searchsorted(devices, expert_to_device)]

"""compare: the balance frontier over load tolerances, dominance, and the oracle."""

import pytest

from moeplace.planner.solvers import SolverOptions
from moeplace.validators.compare import compare, mark_dominated

pytestmark = pytest.mark.slow  # every test here plans whole traces


def test_dominated_rows_are_those_another_row_beats_on_both():
    rows = [
        {"devices": 4, "solver": "a", "load_tolerance": 0.1, "dev_per_token": 2.0, "max_mean_load": 1.05},
        {"devices": 4, "solver": "b", "load_tolerance": 0.1, "dev_per_token": 2.1, "max_mean_load": 1.05},
        {"devices": 4, "solver": "c", "load_tolerance": None, "dev_per_token": 2.5, "max_mean_load": 1.01},
        {"devices": 4, "solver": "d", "load_tolerance": 0.2, "dev_per_token": 1.9, "max_mean_load": 1.20},
        {"devices": 8, "solver": "b", "load_tolerance": 0.1, "dev_per_token": 2.2, "max_mean_load": 1.06},
    ]
    mark_dominated(rows)
    assert [row["dominated_by"] for row in rows] == ["", "a eps=0.1", "", "", ""]


@pytest.fixture(scope="module")
def frontier(real_split):
    fit, held = real_split
    options = SolverOptions(seed=0, time_limit=0.2, search_steps=50)
    solvers = ["frequency", "greedy", "greedy-capped"]
    return compare(fit, held, [4], solvers, [0.0, 0.05, 0.2], options, 4, oracle=True).rows


def test_capped_solvers_run_once_per_tolerance_uncapped_once(frontier):
    runs = [(row["solver"], row["load_tolerance"]) for row in frontier]
    assert runs == [
        ("frequency", None),
        ("greedy", None),
        ("greedy-capped", 0.0),
        ("greedy-capped", 0.05),
        ("greedy-capped", 0.2),
    ]


def test_a_looser_cap_trades_load_for_fewer_devices(frontier):
    capped = {row["load_tolerance"]: row for row in frontier if row["solver"] == "greedy-capped"}
    assert capped[0.2]["dev_per_token"] < capped[0.05]["dev_per_token"] < capped[0.0]["dev_per_token"]
    assert capped[0.2]["fit_dev_per_token"] < capped[0.0]["fit_dev_per_token"]
    assert capped[0.0]["max_mean_load"] < capped[0.2]["max_mean_load"]


def test_oracle_is_the_solver_fit_on_the_held_out_trace(frontier):
    for row in frontier:
        assert row["oracle_gap"] == pytest.approx(row["dev_per_token"] / row["oracle_dev_per_token"] - 1)
    greedy = next(row for row in frontier if row["solver"] == "greedy")
    assert greedy["oracle_dev_per_token"] < greedy["dev_per_token"]  # no cap: fitting the test set pays

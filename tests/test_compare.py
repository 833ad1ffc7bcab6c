"""compare: the balance frontier over load tolerances, dominance, and the oracle."""

import pytest

from moeplace.planner.solvers import SolverOptions
from moeplace.validators.compare import compare, mark_dominated
from moeplace.validators.comparison_row import ComparisonRow
from moeplace.validators.score import Headline

pytestmark = pytest.mark.slow  # every test here plans whole traces


def test_dominated_rows_are_those_another_row_beats_on_both():
    def row(devices, solver, eps, dev_per_token, max_mean_load):
        held_out = Headline(dev_per_token, 1.0, 0.0, max_mean_load, max_mean_load, 1)
        return ComparisonRow(devices, solver, eps, None, held_out, 0.0, False, None, None, None, 0.0)

    rows = [
        row(4, "a", 0.1, 2.0, 1.05),
        row(4, "b", 0.1, 2.1, 1.05),
        row(4, "c", None, 2.5, 1.01),
        row(4, "d", 0.2, 1.9, 1.20),
        row(8, "b", 0.1, 2.2, 1.06),
    ]
    assert [row.dominated_by for row in mark_dominated(rows)] == ["", "a eps=0.1", "", "", ""]


@pytest.fixture(scope="module")
def frontier(real_split):
    fit, held = real_split
    options = SolverOptions(seed=0, time_limit=0.2, search_steps=50)
    solvers = ["frequency", "greedy", "greedy-capped"]
    comparison = compare(fit, held, [4], solvers, [0.0, 0.05, 0.2], options, 4, oracle=True)
    return [row.record() for row in comparison.rows]  # the table, as the CSV holds it


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

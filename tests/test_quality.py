"""Quality on real routing (the packaged gpt-oss-20b subset): fit on half the documents, score on
the other half, against the frequency baseline, with the load guard beside every figure."""

import pytest

from moeplace.planner.solvers import SolverOptions
from moeplace.validators.compare import compare
from moeplace.validators.comparison_row import ComparisonRow

pytestmark = pytest.mark.slow  # every test here plans whole traces


@pytest.fixture(scope="module")
def rows(real_split):
    fit, held = real_split
    options = SolverOptions(load_tolerance=0.10, seed=0, time_limit=0.5, search_steps=300)
    solvers = ["frequency", "greedy", "greedy-capped", "ortools", "refine"]
    result = compare(fit, held, [4, 8], solvers, [0.10], options, 16)
    return {(row["devices"], row["solver"]): row for row in map(ComparisonRow.record, result.rows)}


@pytest.mark.parametrize(("devices", "min_reduction"), [(4, 0.15), (8, 0.10)])
@pytest.mark.parametrize("solver", ["greedy-capped", "ortools"])
def test_capped_solvers_cut_devices_per_token_at_balanced_load(rows, devices, solver, min_reduction):
    row = rows[devices, solver]
    assert row["reduction"] >= min_reduction
    assert row["max_mean_load"] <= 1.15


@pytest.mark.parametrize("devices", [4, 8])
def test_ortools_at_least_matches_its_greedy_hint_on_held_out(rows, devices):
    assert (
        rows[devices, "ortools"]["dev_per_token"] <= rows[devices, "greedy-capped"]["dev_per_token"] + 0.005
    )


@pytest.mark.parametrize("devices", [4, 8])
def test_uncapped_greedy_cuts_more_but_overloads_devices(rows, devices):
    greedy, capped = rows[devices, "greedy"], rows[devices, "greedy-capped"]
    assert greedy["reduction"] > capped["reduction"]
    assert greedy["max_mean_load"] > 1.3 > capped["max_mean_load"]
    assert rows[devices, "frequency"]["max_mean_load"] < 1.1


@pytest.mark.parametrize("devices", [4, 8])
def test_exact_search_beats_greedy_capped_on_held_out_at_balanced_load(rows, devices):
    row, capped = rows[devices, "refine"], rows[devices, "greedy-capped"]
    assert row["dev_per_token"] < capped["dev_per_token"] - 0.01
    assert row["fit_dev_per_token"] < capped["fit_dev_per_token"]
    assert row["max_mean_load"] <= 1.15

"""Re-plans that move few experts (``plan --from --max-moves``): the budget is never exceeded."""

import dataclasses
import itertools

import numpy as np
import pytest

import moeplace
from conftest import run
from moeplace.calibrate.split import split_by_label
from moeplace.cluster import layer_executor
from moeplace.demo import demo_trace_path
from moeplace.errors import MoeplaceError
from moeplace.planner.replan import replan
from moeplace.planner.solvers.caps import device_loads, load_caps
from moeplace.planner.solvers.refine import MoveBudget

TRACE = demo_trace_path()


def test_move_budget_counts_every_swap_exactly():
    rng = np.random.default_rng(0)
    home = np.repeat(np.arange(4), 3)
    device = home.copy()
    for _ in range(3):  # a placement a few swaps from home
        a, b = rng.choice(12, 2, replace=False)
        device[a], device[b] = device[b], device[a]
    for limit in range(8):
        budget = MoveBudget(home, limit)
        allows = budget.allows(device)
        for a, b in itertools.combinations(range(12), 2):
            swapped = device.copy()
            swapped[a], swapped[b] = swapped[b], swapped[a]
            assert allows[a, b] == (budget.moved(swapped) <= limit), (limit, a, b)


@pytest.fixture(scope="module")
def drifted():
    """A placement served on one kind of traffic, and statistics of another kind."""
    fit, new = split_by_label(moeplace.load_trace(TRACE), "gpqa*,sorry*")
    topology = moeplace.Topology(fit.meta.num_experts, 8)
    options = moeplace.SolverOptions(load_tolerance=0.1)
    served = moeplace.plan(moeplace.compute_statistics(fit), topology, "greedy-capped", options)
    return served, moeplace.compute_statistics(new), options


@pytest.mark.slow
@pytest.mark.parametrize("moves", [0, 1, 2, 4, 32])
def test_a_replan_never_moves_more_experts_than_allowed(drifted, moves):
    served, new, options = drifted
    replanned = replan(new, served, moves, options)
    for layer, before, after in zip(
        replanned.layers, served.expert_to_device, replanned.expert_to_device, strict=True
    ):
        assert int((before != after).sum()) == layer.solver_report["moves"] <= moves
        assert (np.bincount(after, minlength=8) == 4).all()
    assert replanned.solver == "replan" and replanned.options["max_moves"] == moves
    if moves == 0:
        np.testing.assert_array_equal(replanned.expert_to_device, served.expert_to_device)
    topology = served.topology
    for index, layer in enumerate(replanned.layers):  # the report says whether the cap holds
        caps = load_caps(new.layer(index), topology, options.load_tolerance)
        loads = device_loads(layer.expert_to_device, caps.scenario_load, topology.num_devices)
        assert layer.solver_report["cap_met"] == bool((loads.max(axis=1) <= caps.cap).all())
    if moves == 32:  # room to repair: the descent brings most layers back under the cap
        assert sum(layer.solver_report["cap_met"] for layer in replanned.layers) >= 20


@pytest.mark.slow
def test_a_replan_refuses_what_it_cannot_do(drifted):
    served, new, options = drifted
    with pytest.raises(MoeplaceError, match="max_moves must be >= 0"):
        replan(new, served, -1, options)
    with pytest.raises(MoeplaceError, match="top-k sets"):
        replan(dataclasses.replace(new, topk_sets=None), served, 2, options)


@pytest.mark.slow
def test_plan_from_a_served_placement_reports_moves_and_recovery(tmp_path):
    fit, new = tmp_path / "fit.npz", tmp_path / "new.npz"
    assert (
        run("split", TRACE, "--holdout-label", "gpqa*", "--fit-out", fit, "--holdout-out", new).exit_code == 0
    )
    served = tmp_path / "served.yaml"
    assert (
        run("plan", fit, "--devices", 8, "--load-tolerance", 0.2, "--out", served, "--jobs", 1).exit_code == 0
    )
    out = tmp_path / "replan.yaml"
    result = run("plan", new, "--from", served, "--max-moves", 4, "--load-tolerance", 0.2, "--out", out)
    assert result.exit_code == 0, result.output
    assert "the moves recover" in result.output and "budget 4" in result.output
    replanned = moeplace.load_placement(out)
    assert max(layer.solver_report["moves"] for layer in replanned.layers) <= 4
    assert replanned.options["from"]["solver"] == "greedy-capped"
    bad = run("plan", new, "--from", served, "--out", out)
    assert bad.exit_code == 2 and "--from and --max-moves go together" in bad.stderr
    bad = run("plan", new, "--from", served, "--max-moves", 2, "--devices", 4, "--out", out)
    assert bad.exit_code == 2 and "8 devices" in bad.stderr
    assert run("plan", new, "--out", out).stderr.startswith("error: --devices is required")


@pytest.mark.slow
def test_an_auto_replan_weighs_moves_by_the_serving_step_and_keeps_the_budget(tmp_path):
    fit, new = tmp_path / "fit.npz", tmp_path / "new.npz"
    run("split", TRACE, "--holdout-label", "gpqa*,sorry*", "--fit-out", fit, "--holdout-out", new)
    served = tmp_path / "served.yaml"
    assert run("plan", fit, "--devices", 8, "--load-tolerance", 0.1, "--out", served).exit_code == 0
    out = tmp_path / "replan.yaml"
    step = ("--step", "decode", "--load-tolerance", "auto")
    result = run("plan", new, "--from", served, "--max-moves", 4, *step, "--out", out)
    assert result.exit_code == 0, result.output
    assert "re-plan: estimated step on the calibration trace" in result.output
    assert "from scratch's step gain" in result.output
    auto = moeplace.load_placement(out).options["load_tolerance_auto"]
    estimates = auto["step_seconds"]
    # the candidates are the served placement and re-plans: a balancer would move every expert
    assert "served" in estimates and not {"frequency", "eplb"} & set(estimates)
    assert len(estimates) > 2 and estimates[auto["chose"]] == min(estimates.values())
    before = moeplace.load_placement(served).expert_to_device
    assert ((moeplace.load_placement(out).expert_to_device != before).sum(axis=1) <= 4).all()
    bad = run("plan", new, "--from", served, "--max-moves", 4, *step[:2], "--step-search", 8, "--out", out)
    assert bad.exit_code == 2 and "--from re-plans by moves alone" in bad.stderr


@pytest.mark.slow
def test_a_replan_over_processes_is_the_same_as_in_one(drifted):
    served, new, options = drifted
    with layer_executor(2) as pool:
        parallel = replan(new, served, 4, options, executor=pool)
    np.testing.assert_array_equal(parallel.expert_to_device, replan(new, served, 4, options).expert_to_device)

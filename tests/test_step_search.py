"""validators/step_search.py: steps sampled from shuffled document orders, and the search that
moves experts to shorten them, never lengthening the calibration step."""

import numpy as np
import pytest

from moeplace.errors import MoeplaceError
from moeplace.planner.topology import Topology
from moeplace.validators.step import Workload, schedule, step_cost


def test_sampled_steps_are_full_steps_of_shuffled_document_orders():
    from moeplace.validators.profile import H800, ModelShape
    from moeplace.validators.report import StepSetting
    from moeplace.validators.step_search import sample_steps

    offsets = np.array([0, 3, 5, 9, 10])
    setting = StepSetting(Workload("prefill", tokens_per_rank=2), H800, ModelShape(8, 8))
    steps = sample_steps(offsets, 2, setting, orders=3, max_steps=1000, seed=0)
    # every sampled token is a trace row, each step holds 2 tokens of each of the 2 ranks
    assert steps.tokens.min() >= 0 and steps.tokens.max() < 10
    cells = np.bincount(steps.step * 2 + steps.source, minlength=steps.num_steps * 2)
    assert (cells == 2).all() and steps.num_steps == len(cells) // 2
    # the first order is the trace's own: its full steps are the replay's
    step, _ = schedule(offsets, 2, Workload("prefill", tokens_per_rank=2))
    first = steps.step < 2
    np.testing.assert_array_equal(np.sort(steps.tokens[first]), np.flatnonzero(step < 2))
    # at most max_steps steps, the first ones kept
    capped = sample_steps(offsets, 2, setting, orders=3, max_steps=3, seed=0)
    assert capped.num_steps == 3 and capped.step.max() == 2


@pytest.mark.slow
def test_step_search_never_lengthens_the_calibration_step_and_is_deterministic(real_split, real_stats):
    from moeplace.planner.plan import plan
    from moeplace.planner.solvers import SolverOptions
    from moeplace.validators.profile import H800, shape_of, step_time
    from moeplace.validators.report import StepSetting
    from moeplace.validators.step_search import step_search

    fit, _ = real_split
    topology = Topology(fit.meta.num_experts, 8)
    start = plan(real_stats, topology, "frequency", SolverOptions(), {})
    setting = StepSetting(Workload("prefill", tokens_per_rank=256), H800, shape_of(fit.meta.model))
    searched = step_search(start, fit, setting, evaluations=64, seed=0)
    again = step_search(start, fit, setting, evaluations=64, seed=0)
    np.testing.assert_array_equal(searched.expert_to_device, again.expert_to_device)
    reports = [layer.solver_report["step_search"] for layer in searched.layers]
    assert all(r["seconds_after"] <= r["seconds_before"] for r in reports)
    assert any(r["seconds_after"] < r["seconds_before"] for r in reports)
    # equal expert counts per device, as the engines need
    assert (np.stack([np.bincount(row, minlength=8) for row in searched.expert_to_device]) == 4).all()

    def seconds(placement):
        cost = step_cost(placement.physical_to_logical, fit, topology, setting.workload)
        return step_time(cost, setting.shape, H800, "rank").total(True)

    assert seconds(searched) < seconds(start)  # on the calibration trace's own replay too
    with pytest.raises(MoeplaceError, match="one copy of each expert"):
        step_search(plan(real_stats, Topology(32, 8, 1, 8), "eplb", SolverOptions(), {}), fit, setting, 8)


@pytest.mark.slow
def test_plan_step_search_records_what_it_did_and_refuses_what_it_cannot(tmp_path, good):
    from conftest import refused, run
    from moeplace.demo import demo_trace_path
    from moeplace.planner.placement import load_placement

    result = run("plan", demo_trace_path(), "--devices", 8, "--load-tolerance", 0.05, "--step", "prefill",
                 "--step-search", 16, "--jobs", 1, "--out", tmp_path / "p.yaml")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "step search on" in result.stdout and "estimated step" in result.stdout
    placement = load_placement(tmp_path / "p.yaml")
    assert placement.options["step_search"]["evaluations"] == 16
    assert all("step_search" in layer.solver_report for layer in placement.layers)
    plan = ("plan", good / "trace.npz", "--devices", 4, "--out", tmp_path / "o.yaml", "--step-search", 8)
    refused(run(*plan), None, "--step-search needs --step")
    refused(run(*plan, "--step", "prefill", "--redundant-slots", 4), None, "one copy of each expert")
    assert not (tmp_path / "o.yaml").exists()

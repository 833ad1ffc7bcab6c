"""validators/choose.py: ``--load-tolerance auto`` keeps the plan whose serving step is cheapest on
the calibration trace (a balancer when co-location does not pay), equal steps going to less traffic."""

import pytest


@pytest.mark.slow
@pytest.mark.parametrize(("links_gbps", "wins"), [(0.01, "co-location"), (1e6, "frequency")])
def test_auto_tolerance_follows_the_step(tmp_path, links_gbps, wins):
    """Links so slow that traffic is the step: auto co-locates; links so fast that only the compute
    straggler counts: auto keeps frequency. Chosen on the calibration trace, said in the file."""
    import yaml

    from conftest import run
    from moeplace.demo import demo_trace_path
    from moeplace.planner.placement import load_placement

    (tmp_path / "hw.yaml").write_text(
        yaml.safe_dump(
            {
                "nvlink": {k: [links_gbps, links_gbps] for k in ("rank", "node", "expert")},
                "rdma": {k: [links_gbps, links_gbps] for k in ("rank", "node", "expert")},
                "tflops": 1000.0,
                "hbm_tbps": 3.0,
                "efficiency": 0.5,
            }
        )
    )
    result = run("plan", demo_trace_path(), "--devices", 8, "--load-tolerance", "auto", "--step", "prefill",
                 "--profile", tmp_path / "hw.yaml", "--jobs", 1, "--out", tmp_path / "p.yaml")  # fmt: skip
    assert result.exit_code == 0, result.output
    placement = load_placement(tmp_path / "p.yaml")
    auto = placement.options["load_tolerance_auto"]
    assert set(auto["step_seconds"]) >= {"frequency", "eplb", "eps=0", "eps=0.1"}
    if wins == "frequency":
        assert placement.solver == "frequency" and auto["chose"] == "frequency" and auto["tolerance"] is None
        assert "co-location does not pay this step" in result.stdout
    else:
        assert placement.solver == "greedy-capped" and auto["tolerance"] is not None
        assert auto["chose"] == f"eps={auto['tolerance']:g}"
        assert auto["step_seconds"][auto["chose"]] < auto["step_seconds"]["frequency"]
        assert auto["step_seconds"][auto["chose"]] < auto["step_seconds"]["eplb"]


def test_auto_tolerance_needs_a_step_and_a_trace(tmp_path, good):
    from conftest import refused, run

    plan = ("plan", good / "trace.npz", "--devices", 4, "--out", tmp_path / "o.yaml")
    refused(run(*plan, "--load-tolerance", "auto"), None, "needs --step")
    refused(run(*plan, "--load-tolerance", "lots"), None, "--load-tolerance")


def test_auto_keeps_the_shortest_step_and_equal_steps_go_to_less_traffic():
    from moeplace.validators.choose import Choice, cheapest
    from moeplace.validators.profile import StepTime

    def t(dispatch, compute):
        return StepTime(dispatch, compute, dispatch, max(2 * dispatch, compute))

    times = {
        "frequency": t(1.0, 10.0),
        "eplb": t(1.0, 10.0),
        "eps=0.1": t(0.5, 10.0),
        "eps=0.2": t(0.1, 11.0),
    }
    assert cheapest(times, overlap=True) == "eps=0.1"  # hidden traffic, equal steps: the lighter links
    assert cheapest(times, overlap=False) == "eps=0.1"
    assert cheapest({"frequency": t(1.0, 10.0), "eplb": t(1.0, 10.0)}, overlap=True) == "frequency"
    choice = Choice(None, "frequency", None, {"frequency": t(1.0, 10.0)}, overlap=True)
    assert "waits on expert compute" in choice.verdict("rank")
    assert "one message per expert" in choice.verdict("expert")
    assert "compute imbalance" in Choice(None, "eplb", None, {"eplb": t(10.0, 1.0)}, True).verdict("rank")
    assert Choice(None, "eps=0.1", 0.1, times, True).verdict("rank").startswith("eps 0.1: co-location pays")
    assert (
        Choice(None, "served", None, {"served": t(1.0, 1.0)}, True)
        .verdict("rank")
        .startswith("served: no re")
    )

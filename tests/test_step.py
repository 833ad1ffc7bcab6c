"""validators/step.py: the step model against steps counted by hand, each sending rule against its
definition, and on real routing against the proxy it refines; the step's section and gate in
validate, plan and compare (validators/report.py)."""

import numpy as np
import pytest

from conftest import make_trace
from moeplace.errors import MoeplaceError
from moeplace.planner.topology import Topology
from moeplace.validators.step import Workload, rank_traffic, schedule, step_cost


def test_prefill_deals_requests_to_the_least_queued_rank_and_cuts_chunks():
    step, rank = schedule(np.array([0, 3, 5, 9]), 2, Workload("prefill", tokens_per_rank=2))
    # request 0 -> rank 0 (queues 0, 0); 1 -> rank 1 (3, 0); 2 -> rank 1 (3, 2); chunks of 2 a rank
    np.testing.assert_array_equal(rank, [0, 0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(step, [0, 0, 1, 0, 0, 1, 1, 2, 2])


def test_decode_gives_each_request_the_first_free_slot():
    step, rank = schedule(np.array([0, 3, 5, 9]), 2, Workload("decode", requests_per_rank=1))
    # request 0 on rank 0 at steps 0-2; 1 on rank 1 at 0-1; 2 takes rank 1's slot, free at step 2
    np.testing.assert_array_equal(rank, [0, 0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(step, [0, 1, 2, 0, 1, 2, 3, 4, 5])


TOPOLOGY = Topology(8, 4, num_nodes=2)  # ranks 0-1 on node 0, 2-3 on node 1


def traffic(served, kernel, sources=(0,)):
    """Totals over the one step: rank -> figure -> count."""
    served = np.array(served)
    out = rank_traffic(
        served, served, np.zeros(len(served), np.int64), np.array(sources), 1, TOPOLOGY, kernel
    )
    return {figure: counts[0].tolist() for figure, counts in out.items()}


def test_rank_rule_sends_once_per_remote_rank():
    got = traffic([[0, 1, 1, 3]], "rank")  # two experts on rank 1: one copy
    assert got["pairs"] == [1, 2, 0, 1]
    assert got["experts"] == [1, 1, 0, 1]  # the ids here are the ranks: rank 1 reads one expert twice
    assert got["sent_nvlink"] == [1, 0, 0, 0] and got["received_nvlink"] == [0, 1, 0, 0]
    assert got["sent_rdma"] == [1, 0, 0, 0] and got["received_rdma"] == [0, 0, 0, 1]


def test_node_rule_sends_once_per_remote_node_then_forwards_within_it():
    got = traffic([[1, 2, 3, 3]], "node")
    # rank 0 -> rank 1 over NVLink; one RDMA copy to node 1, to rank 2 (local index 0 like rank 0),
    # which computes its expert and forwards over NVLink to rank 3
    assert got["sent_nvlink"] == [1, 0, 1, 0] and got["received_nvlink"] == [0, 1, 0, 1]
    assert got["sent_rdma"] == [1, 0, 0, 0] and got["received_rdma"] == [0, 0, 1, 0]
    relay_not_needed = traffic([[3, 3, -1, -1]], "node", sources=(1,))  # rank 1's relay is rank 3
    assert relay_not_needed["received_rdma"] == [0, 0, 0, 1] and relay_not_needed["sent_nvlink"] == [
        0,
        0,
        0,
        0,
    ]


def test_expert_rule_sends_every_remote_pair():
    got = traffic([[0, 1, 1, 3]], "expert")
    assert got["received_nvlink"] == [0, 2, 0, 0] and got["received_rdma"] == [0, 0, 0, 1]
    assert got["sent_nvlink"] == [2, 0, 0, 0] and got["sent_rdma"] == [1, 0, 0, 0]


def test_a_rank_of_its_own_experts_pays_no_traffic():
    for kernel in ("rank", "node", "expert"):
        got = traffic([[2, 2, 2, -1]], kernel, sources=(2,))
        moved = sum(sum(got[f]) for f in got if f.startswith(("sent", "received")))
        assert moved == 0 and got["pairs"] == [0, 0, 3, 0]


def test_the_straggler_is_the_busiest_rank_of_each_step_averaged_over_steps():
    # 2 ranks, 1 node, experts 0-1 on rank 0 and 2-3 on rank 1; prefill chunks of 2 tokens a rank
    ids = np.array([[0, 1], [0, 2], [2, 3], [1, 3]])[:, None, :]  # 4 tokens, 1 layer, top-2
    trace = make_trace(ids, [2, 2], 4)  # request 0 -> rank 0, request 1 -> rank 1; one step
    cost = step_cost(np.array([[0, 1, 2, 3]]), trace, Topology(4, 2), Workload("prefill", tokens_per_rank=2))
    assert cost.steps == 1
    # rank 0 runs tokens 0-1: token 1 sends to rank 1; rank 1 runs 2-3: token 3 sends to rank 0
    np.testing.assert_array_equal(cost.straggler["received_nvlink"], [1.0])
    np.testing.assert_array_equal(cost.straggler["pairs"], [4.0])  # rank 0: 2 + 1 + 1 pairs
    np.testing.assert_array_equal(cost.mean["pairs"], [4.0])


def test_only_steps_with_full_batches_count_unless_none_has_them():
    # decode, 2 ranks x 1 live request: request 0 (3 tokens) on rank 0, 1 (1 token) on rank 1, then
    # request 2 (1 token) on rank 1 at step 1; at step 2 rank 1 has nothing left: the drain
    ids = np.array([[0, 2], [0, 2], [1, 3], [2, 3], [0, 1]])[:, None, :]
    trace = make_trace(ids, [3, 1, 1], 4)
    cost = step_cost(np.array([[0, 1, 2, 3]]), trace, Topology(4, 2), Workload("decode", requests_per_rank=1))
    assert (cost.steps, cost.replayed, cost.batch) == (2, 3, 1.0)
    # rank 0 sends a token to rank 1 in steps 0 and 1, rank 1 one to rank 0 in step 1: 1 a step
    np.testing.assert_array_equal(cost.straggler["received_nvlink"], [1.0])
    # with 2 live requests a rank no step is full: every step counts
    drained = step_cost(
        np.array([[0, 1, 2, 3]]), trace, Topology(4, 2), Workload("decode", requests_per_rank=2)
    )
    assert (drained.steps, drained.replayed) == (3, 3)


def test_a_workload_that_cannot_be_is_refused():
    with pytest.raises(MoeplaceError, match="kernel"):
        Workload(kernel="magic")
    with pytest.raises(MoeplaceError, match="at least 1"):
        Workload(tokens_per_rank=0)


@pytest.mark.slow
def test_real_routing_colocation_cuts_copies_more_than_the_straggler(real_split, real_stats):
    """gpt-oss, D = 8, chunks of 1,024 tokens a rank: greedy-capped cuts the mean rank's received
    copies more than the busiest rank's, and raises the compute straggler (pairs) above frequency's;
    the proxy (mean fan-out) overstates what the step gains."""
    from moeplace.planner.plan import plan
    from moeplace.planner.solvers import SolverOptions

    held = real_split[1]
    topology = Topology(32, 8)
    workload = Workload("prefill", tokens_per_rank=1024)
    costs = {}
    for solver in ("frequency", "greedy-capped"):
        placement = plan(real_stats, topology, solver, SolverOptions(load_tolerance=0.1), {})
        costs[solver] = step_cost(placement.physical_to_logical, held, topology, workload).summary()
    base, ours = costs["frequency"], costs["greedy-capped"]
    mean_cut = 1 - ours["received_mean"] / base["received_mean"]
    straggler_cut = 1 - ours["received_straggler"] / base["received_straggler"]
    assert 0 < straggler_cut < mean_cut
    assert ours["pairs_straggler"] > base["pairs_straggler"] and ours["pairs_mean"] == pytest.approx(
        base["pairs_mean"]
    )


@pytest.mark.slow
def test_validate_reports_the_step_and_gates_on_it(tmp_path, real_split):
    """The CLI: the step section beside the proxy, in JSON too, and --min-speedup failing on it."""
    import json

    from conftest import run
    from moeplace.calibrate.trace_io import save_trace
    from moeplace.planner.placement import load_placement

    fit, held = real_split
    save_trace(fit, tmp_path / "fit.npz")
    save_trace(held, tmp_path / "held.npz")
    planned = run("plan", tmp_path / "fit.npz", "--devices", 8, "--solver", "greedy-capped",
                  "--load-tolerance", 0.1, "--holdout", tmp_path / "held.npz", "--step", "decode",
                  "--out", tmp_path / "p.yaml")  # fmt: skip
    assert planned.exit_code == 0, planned.output
    recorded = load_placement(tmp_path / "p.yaml").validation["step"]
    result = run("validate", tmp_path / "p.yaml", tmp_path / "held.npz", "--step", "decode", "--json")
    assert result.exit_code == 0, result.output
    step = json.loads(result.output)["step"]
    assert "a model, not a measurement" in step["model"] and step["workload"]["phase"] == "decode"
    assert step["seconds"]["step"] > 0 and step["traffic"]["pairs_straggler"] >= step["traffic"]["pairs_mean"]
    assert step["eplb_seconds"]["step"] > 0 and -1 < step["speedup_vs_eplb"] < 1
    assert recorded["seconds"] == pytest.approx(step["seconds"])  # plan --holdout records the same figures
    # whole steps: the rest (the same for both placements) added to the MoE part, and said so
    seconds, baseline = step["seconds"], step["baseline_seconds"]
    assert step["whole_step"] and seconds["rest"] == baseline["rest"] > 0
    assert seconds["step"] == pytest.approx(seconds["moe"] + seconds["rest"])
    assert abs(step["speedup"]) <= abs(step["moe_speedup"])
    # sizes from a config file: the same model's config gives the same step; without one, the MoE part
    from moeplace.validators.profile import CONFIGS

    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["openai/gpt-oss-20b"]))
    configured = run("validate", tmp_path / "p.yaml", tmp_path / "held.npz", "--step", "decode",
                     "--model-config", tmp_path / "config.json", "--json")  # fmt: skip
    assert json.loads(configured.output)["step"]["seconds"] == pytest.approx(seconds)
    sizes_only = run("validate", tmp_path / "p.yaml", tmp_path / "held.npz", "--step", "decode",
                     "--hidden", 2880, "--intermediate", 2880)  # fmt: skip
    assert "the MoE part only" in sizes_only.output and "step (MoE part only)" in sizes_only.output
    gated = run(
        "validate", tmp_path / "p.yaml", tmp_path / "held.npz", "--step", "prefill", "--min-speedup", 0.5
    )
    assert gated.exit_code == 1 and "the better balancer: speedup" in gated.stderr
    assert "serving step, prefill" in gated.output and "whole step" in gated.output
    refused = run("validate", tmp_path / "p.yaml", tmp_path / "held.npz", "--min-speedup", 0.1)
    assert refused.exit_code == 2 and "--min-speedup needs --step" in refused.stderr


@pytest.mark.slow
def test_compare_adds_the_step_columns(tmp_path):
    from conftest import run
    from moeplace.demo import demo_trace_path

    result = run("compare", demo_trace_path(), "--devices", 8, "--solvers", "frequency,greedy-capped",
                 "--load-tolerance", 0.1, "--step", "decode", "--jobs", 1,
                 "--out", tmp_path / "c")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "c" / "comparison.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"step_ms", "step_speedup", "received_straggler", "pairs_straggler"} <= set(header)
    frequency = dict(zip(header, rows[1].split(","), strict=True))
    assert frequency["solver"] == "frequency" and float(frequency["step_speedup"]) == 0.0
    solvers = [dict(zip(header, row.split(","), strict=True))["solver"] for row in rows[1:]]
    assert solvers == ["frequency", "eplb", "greedy-capped"]  # the references come with every step
    assert (tmp_path / "c" / "steps.png").read_bytes().startswith(b"\x89PNG")
    assert "serving step: decode" in (tmp_path / "c" / "comparison.md").read_text()


@pytest.mark.parametrize("largest", [8, 64, 200])  # the bit mask below 64, comparisons above
def test_repeats_within_a_row_are_dropped_like_a_set_would(largest):
    from moeplace.validators.step import _first_in_row

    values = np.random.default_rng(largest).integers(-1, largest, (500, 8))
    expected = [
        [v if v < 0 or v not in row[:j] else -1 for j, v in enumerate(row)] for row in values.tolist()
    ]
    np.testing.assert_array_equal(_first_in_row(values), expected)


def step_comparison(ours: float, frequency: float, eplb: float):
    """A ``StepComparison`` whose steps take these milliseconds (counts left out: unused here)."""
    from moeplace.validators.profile import H800, ModelShape, StepTime
    from moeplace.validators.report import StepComparison, StepSetting

    def time(ms):
        return StepTime(dispatch=0.0, compute=ms / 1e3, combine=0.0, overlapped=ms / 1e3)

    setting = StepSetting(Workload(), H800, ModelShape(64, 32))
    return StepComparison(setting, time(ours), time(frequency), None, None, time(eplb))


def test_the_step_gate_reads_the_better_balancer():
    from moeplace.validators.report import MIN_STEP_SPEEDUP

    assert MIN_STEP_SPEEDUP == -0.01
    slower = step_comparison(4.205, 4.004, 4.100)  # the example: 5% slower than frequency
    assert slower.best_balancer == "frequency" and slower.speedup_vs_best == pytest.approx(-0.0502, abs=1e-4)
    assert "vs frequency 4.004 ms, the better balancer: speedup -5.0%" in slower.verdict()
    eplb_better = step_comparison(4.0, 4.2, 3.97)
    assert eplb_better.best_balancer == "eplb" and eplb_better.verdict() is None  # 0.8% slower: passes
    assert "vs eplb 3.950 ms" in step_comparison(4.0, 4.2, 3.95).verdict()  # 1.3% slower: fails
    assert step_comparison(4.0, 4.0, 4.0).verdict() is None  # as fast passes the default
    assert step_comparison(4.0, 4.0, 4.0).verdict(0.05) is not None  # but not a demand for 5%


@pytest.mark.slow
def test_plan_holdout_and_compare_gate_a_slower_step(tmp_path, real_split):
    """With --step a slower placement fails: plan --holdout writes it and exits 1, compare exits 1
    after writing its files; each names the better balancer."""
    from conftest import run
    from moeplace.calibrate.trace_io import save_trace

    fit, held = real_split
    save_trace(fit, tmp_path / "fit.npz")
    save_trace(held, tmp_path / "held.npz")
    step = ("--step", "prefill", "--tokens-per-rank", 256, "--min-speedup", 0.5)  # asks 50% faster: fails
    planned = run("plan", tmp_path / "fit.npz", "--devices", 4, "--holdout", tmp_path / "held.npz", *step,
                  "--jobs", 1, "--out", tmp_path / "p.yaml")  # fmt: skip
    assert planned.exit_code == 1 and "the better balancer" in planned.stderr, planned.output
    assert (tmp_path / "p.yaml").exists()
    compared = run("compare", tmp_path / "fit.npz", "--devices", 4, "--solvers", "greedy-capped",
                   "--load-tolerance", 0.1, *step, "--jobs", 1, "--out", tmp_path / "c")  # fmt: skip
    assert compared.exit_code == 1 and "greedy-capped eps=0.1, D=4" in compared.stderr, compared.output
    assert (tmp_path / "c" / "comparison.md").exists()
    refused = run(
        "plan", tmp_path / "fit.npz", "--devices", 4, "--min-speedup", 0.1, "--out", tmp_path / "q.yaml"
    )
    assert refused.exit_code == 2 and "needs --holdout and --step" in refused.stderr

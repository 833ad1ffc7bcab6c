"""Load records of several workloads: import (SGLang's logical_count JSON), the robust planner,
validation per workload, merges that keep labels, and bad input.

The fixtures are tiny files in SGLang's form (a DeepSeek-V3-shaped config scaled down: 32 experts in
8 routing groups, top-4, 6 hidden layers of which the first is dense), with synthetic skewed loads:
plumbing and invariants here; quality on the real DeepSeek-V3 records is benchmarks/load_workloads.py.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import numpy as np
import pytest

from conftest import refused, run
from moeplace.calibrate.importers import ImportOptions
from moeplace.calibrate.importers.sglang_load import read_load
from moeplace.calibrate.model_config import moe_layout
from moeplace.calibrate.stats_io import load_statistics
from moeplace.calibrate.synthetic import routing_from_load
from moeplace.planner.placement import load_placement
from moeplace.planner.plan import plan
from moeplace.planner.slots import repeated_copy
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.topology import Topology
from moeplace.planner.workloads import pack_robust, robust_counts
from moeplace.validators.balance import validate_balance
from moeplace.validators.step import Workload, filling_documents, schedule

CONFIG = {
    "model_type": "deepseek_v3",
    "n_routed_experts": 32,
    "num_experts_per_tok": 4,
    "n_group": 8,
    "topk_group": 4,
    "first_k_dense_replace": 1,
    "num_hidden_layers": 6,
}
LAYOUT = moe_layout(CONFIG)


def workload_counts(seed: int, hot: int = 3, factor: int = 12) -> np.ndarray:
    """int ``[6 hidden layers, 32]``: skewed counts, ``hot`` experts per layer ``factor`` times the
    rest (different experts for each seed), the dense layer 0 zero."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(200, 2000, size=(6, 32))
    for layer in range(1, 6):
        counts[layer, rng.choice(32, hot, replace=False)] *= factor
    counts[0] = 0
    return counts


def write_record(path, counts) -> None:
    """SGLang's form: ``{"logical_count": [[floats] x hidden layers]}``."""
    path.write_text(json.dumps({"logical_count": np.asarray(counts, float).tolist()}))


def read_load_counts(counts):
    """Statistics of workloads from count arrays, through the importer (files in SGLang's form)."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [pathlib.Path(folder) / f"w{i}.json" for i in range(len(counts))]
        for path, count in zip(paths, counts, strict=True):
            write_record(path, count)
        return read_load(paths, ImportOptions(layout=LAYOUT))


@pytest.fixture()
def records(tmp_path):
    """Three workload files and the model config."""
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    for seed, name in enumerate(("prefill_a", "prefill_b", "decode_c")):
        write_record(tmp_path / f"{name}.json", workload_counts(seed))
    return tmp_path


def import_load(directory, names, out, *extra):
    files = [directory / f"{name}.json" for name in names]
    return run(
        "import", "sglang-load", *files, "--model-config", directory / "config.json", "--out", out, *extra
    )


def test_import_keeps_each_workload_apart_and_reads_the_model_config(records, tmp_path):
    result = import_load(records, ["prefill_a", "prefill_b", "decode_c"], tmp_path / "load.npz")
    assert result.exit_code == 0, result.output
    stats = load_statistics(tmp_path / "load.npz")
    assert stats.workloads == ("prefill_a", "prefill_b", "decode_c")
    assert stats.meta.layer_ids == (1, 2, 3, 4, 5)  # layer 0 is dense
    assert (stats.meta.routing_groups, stats.meta.groups_per_token, stats.meta.num_hidden_layers) == (8, 4, 6)
    for w, seed in enumerate(range(3)):
        np.testing.assert_array_equal(stats.workload_load[w], workload_counts(seed)[1:])
    np.testing.assert_array_equal(stats.load, stats.workload_load.sum(axis=0))
    assert stats.load_only


def test_files_with_one_label_are_shards_of_one_workload(records, tmp_path):
    result = import_load(
        records,
        ["prefill_a", "prefill_b", "decode_c"],
        tmp_path / "load.npz",
        "--label",
        "prefill,prefill,decode",
    )
    assert result.exit_code == 0, result.output
    stats = load_statistics(tmp_path / "load.npz")
    assert stats.workloads == ("prefill", "decode")
    np.testing.assert_array_equal(stats.workload_load[0], (workload_counts(0) + workload_counts(1))[1:])


def test_merge_keeps_workload_labels(records, tmp_path):
    assert import_load(records, ["prefill_a", "prefill_b"], tmp_path / "one.npz").exit_code == 0
    assert import_load(records, ["prefill_b", "decode_c"], tmp_path / "two.npz").exit_code == 0
    result = run("merge", tmp_path / "one.npz", tmp_path / "two.npz", "--out", tmp_path / "merged.npz")
    assert result.exit_code == 0, result.output
    merged = load_statistics(tmp_path / "merged.npz")
    assert merged.workloads == ("prefill_a", "prefill_b", "decode_c")
    np.testing.assert_array_equal(
        merged.workload_load[1], 2 * workload_counts(1)[1:]
    )  # the shared label sums


def _check_engine_rules(placement, topology):
    """Every expert has a copy, slots per device fill evenly, no device holds two copies of one."""
    for row in placement.physical_to_logical:
        assert row.shape == (topology.num_physical,)
        assert set(row.tolist()) == set(range(topology.num_experts))
        assert repeated_copy(row, topology.slots_per_device) is None


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["free", "nodes"])
def test_plan_defaults_to_robust_on_load_records_and_keeps_the_engines_rules(records, tmp_path, mode):
    assert import_load(records, ["prefill_a", "prefill_b", "decode_c"], tmp_path / "load.npz").exit_code == 0
    out = tmp_path / "p.yaml"
    args = ["plan", tmp_path / "load.npz", "--devices", 8, "--nodes", 4, "--redundant-slots", 8]
    result = run(*args, "--group-mode", mode, "--out", out)
    assert result.exit_code == 0, result.output
    placement = load_placement(out)
    assert placement.solver == "robust"
    topology = Topology(32, 8, 4, 8)
    _check_engine_rules(placement, topology)
    if mode == "nodes":  # each routing group's experts, replicas included, on one node
        node_of_slot = np.arange(40) // 10
        for row in placement.physical_to_logical:
            for group in range(8):
                assert len(set(node_of_slot[(row // 4) == group].tolist())) == 1
    again = tmp_path / "again.yaml"
    assert run(*args, "--group-mode", mode, "--out", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()  # deterministic, byte for byte


def test_robust_holds_balance_on_every_workload_where_eplb_fits_their_pool():
    """Two workloads with different hot experts: EPLB fit on the pool balances their mix; the
    robust plan must leave every workload (scored on its own) no worse on average."""
    counts = [workload_counts(seed, hot=2) for seed in (10, 11)]
    stats = read_load_counts(counts)
    topology = Topology(32, 8, 1, 8)
    ours = plan(stats, topology, "robust", SolverOptions(group_mode="free"))
    eplb = plan(stats, topology, "eplb", SolverOptions(group_mode="free"))
    ours_score = validate_balance(ours, stats, allow_overlap=True).max_mean_load.mean()  # in-sample
    eplb_score = validate_balance(eplb, stats, allow_overlap=True).max_mean_load.mean()
    assert ours_score < eplb_score - 0.01, (ours_score, eplb_score)


def test_in_sample_robust_is_no_worse_than_eplb_on_one_workload():
    for seed in range(4):
        stats = read_load_counts([workload_counts(seed)])
        topology = Topology(32, 8, 1, 8)
        ours = validate_balance(
            plan(stats, topology, "robust"), stats, allow_overlap=True
        ).max_mean_load.mean()
        eplb = validate_balance(plan(stats, topology, "eplb"), stats, allow_overlap=True).max_mean_load.mean()
        assert ours <= eplb + 0.01, (seed, ours, eplb)


def test_robust_counts_give_copies_to_experts_hot_in_one_workload_only():
    shares = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])
    copies = robust_counts(shares, np.array([0.5, 0.5]), 8, 4)
    assert copies.sum() == 8 and copies.min() >= 1 and copies[0] == copies[5] == 2


def test_pack_robust_never_puts_two_items_of_one_label_in_a_bin():
    rng = np.random.default_rng(0)
    for trial in range(20):
        labels = np.repeat(np.arange(6), [4, 4, 1, 1, 1, 1])  # two labels in every one of 4 bins
        loads = rng.random((labels.shape[0], 3))
        bins = pack_robust(loads, np.full(3, 1 / 3), 4, labels=labels)
        assert np.bincount(bins, minlength=4).tolist() == [3, 3, 3, 3], trial
        pairs = {(int(b), int(x)) for b, x in zip(bins, labels, strict=True)}
        assert len(pairs) == labels.shape[0], trial


def test_validate_scores_each_held_out_workload_beside_eplb(records, tmp_path):
    assert import_load(records, ["prefill_a"], tmp_path / "fit.npz").exit_code == 0
    assert import_load(records, ["decode_c", "prefill_b"], tmp_path / "held.npz").exit_code == 0
    plan_args = ["plan", tmp_path / "fit.npz", "--devices", 8, "--redundant-slots", 8, "--group-mode", "free"]
    assert run(*plan_args, "--out", tmp_path / "p.yaml").exit_code == 0
    result = run("validate", tmp_path / "p.yaml", tmp_path / "held.npz", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    per_workload = summary["workloads"]
    assert list(per_workload) == ["decode_c", "prefill_b"]
    figures = [x["max_mean_load"] for x in per_workload.values()]
    assert summary["max_mean_load"] == pytest.approx(np.mean(figures), abs=1e-5)
    assert summary["worst_workload_max_mean_load"] == pytest.approx(max(figures), abs=1e-5)
    assert summary["baseline"]["solver"] == "eplb" and "dev_per_token" not in summary
    gated = run("validate", tmp_path / "p.yaml", tmp_path / "held.npz", "--max-load-ratio", 1.0001)
    assert gated.exit_code == 1 and "mean over workloads" in gated.stderr


def test_workload_weights_name_known_workloads(records, tmp_path):
    assert import_load(records, ["prefill_a", "decode_c"], tmp_path / "load.npz").exit_code == 0
    args = ["plan", tmp_path / "load.npz", "--devices", 8, "--redundant-slots", 8, "--group-mode", "free"]
    weighted = run(*args, "--workload-weights", "prefill_a=3,decode_c=1", "--out", tmp_path / "w.yaml")
    assert weighted.exit_code == 0, weighted.output
    refused(
        run(*args, "--workload-weights", "nope=1", "--out", tmp_path / "x.yaml"), problem="no workload nope"
    )
    assert not (tmp_path / "x.yaml").exists()


# --- bad input: one line naming the file, exit 2, nothing written --------------------------------------


def _bad(records, tmp_path, counts_or_text, problem):
    bad = tmp_path / "bad.json"
    if isinstance(counts_or_text, str):
        bad.write_text(counts_or_text)
    else:
        write_record(bad, counts_or_text)
    result = run(
        "import", "sglang-load", records / "prefill_a.json", bad, "--model-config", records / "config.json",
        "--out", tmp_path / "out.npz",
    )  # fmt: skip
    refused(result, bad, problem)
    assert not (tmp_path / "out.npz").exists()


def test_a_shape_that_contradicts_the_model_config_is_refused(records, tmp_path):
    (records / "prefill_a.json").unlink()
    write_record(records / "prefill_a.json", workload_counts(0)[:, :16])
    result = run(
        "import", "sglang-load", records / "prefill_a.json", "--model-config", records / "config.json",
        "--out", tmp_path / "out.npz",
    )  # fmt: skip
    refused(result, "prefill_a.json", "the model config says 6 hidden layers x 32")


def test_negative_non_finite_and_fractional_counts_are_refused(records, tmp_path):
    negative = workload_counts(5)
    negative[2, 3] = -1
    _bad(records, tmp_path, negative, "counts are finite and >= 0")
    nan = workload_counts(5).astype(float).tolist()
    nan[2][3] = float("nan")
    _bad(records, tmp_path, json.dumps({"logical_count": nan}), "counts are finite and >= 0")
    fractional = workload_counts(5).astype(float)
    fractional[2, 3] += 0.5
    _bad(records, tmp_path, fractional, "whole numbers")


def test_a_dense_layer_with_load_is_refused(records, tmp_path):
    dense = workload_counts(5)
    dense[0, 7] = 9
    _bad(records, tmp_path, dense, "layer 0 is dense")


def test_a_workload_of_another_shape_is_refused(tmp_path, records):
    write_record(tmp_path / "other.json", workload_counts(5)[:, :16])
    result = run(
        "import", "sglang-load", records / "prefill_a.json", tmp_path / "other.json", "--top-k", 4,
        "--out", tmp_path / "out.npz",
    )  # fmt: skip
    refused(result, "other.json", "every workload must record the same model")
    assert not (tmp_path / "out.npz").exists()


def test_not_a_load_record_is_refused(records, tmp_path):
    _bad(records, tmp_path, json.dumps({"physical_to_logical_map": [[0]]}), "not an SGLang load record")
    _bad(records, tmp_path, "{not json", "")


@pytest.mark.slow
def test_monitor_judges_each_recent_workload_on_its_own(records, tmp_path):
    assert import_load(records, ["prefill_a", "prefill_b"], tmp_path / "fit.npz").exit_code == 0
    plan_args = ["plan", tmp_path / "fit.npz", "--devices", 8, "--redundant-slots", 8, "--group-mode", "free"]
    assert run(*plan_args, "--out", tmp_path / "p.yaml").exit_code == 0
    # recent: one workload as calibrated, one whose hot experts the placement never saw
    write_record(records / "drifted.json", workload_counts(99, hot=4))
    assert import_load(records, ["prefill_a", "drifted"], tmp_path / "recent.npz").exit_code == 0
    result = run("monitor", tmp_path / "p.yaml", tmp_path / "recent.npz", "--json")
    summary = json.loads(result.stdout)
    assert list(summary["workloads"]) == ["prefill_a", "drifted"]
    assert summary["workloads"]["prefill_a"]["action"] == "keep"
    assert summary["workloads"]["drifted"]["action"] == "rebalance"
    assert summary["action"] == "rebalance" and result.exit_code == 1
    alone = run("monitor", tmp_path / "p.yaml", records / "prefill_a.json")  # not statistics: refused
    assert alone.exit_code == 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["free", "nodes"])
def test_replan_with_few_slot_moves_keeps_the_budget_the_rules_and_the_groups(records, tmp_path, mode):
    """Served on two prefill-like workloads, re-planned on a drifted one: at most M slots a layer
    change expert, balance on the new traffic does not get worse (and improves with moves), and
    with groups on nodes every group's copies stay on the node they were on."""
    assert import_load(records, ["prefill_a", "prefill_b"], tmp_path / "fit.npz").exit_code == 0
    write_record(records / "drifted.json", workload_counts(99, hot=4))
    assert import_load(records, ["drifted"], tmp_path / "new.npz").exit_code == 0
    args = ["plan", tmp_path / "fit.npz", "--devices", 8, "--nodes", 4, "--redundant-slots", 8]
    assert run(*args, "--group-mode", mode, "--out", tmp_path / "served.yaml").exit_code == 0
    served = load_placement(tmp_path / "served.yaml")
    new = load_statistics(tmp_path / "new.npz")
    before = validate_balance(served, new, allow_overlap=True).max_mean_load.mean()  # the re-plan's own
    for moves in (0, 1, 3):
        out = tmp_path / f"moved{moves}.yaml"
        result = run(
            "plan",
            tmp_path / "new.npz",
            "--from",
            tmp_path / "served.yaml",
            "--max-moves",
            moves,
            "--out",
            out,
        )
        assert result.exit_code == 0, result.output
        assert "of robust from scratch's balance gain" in result.stdout
        moved = load_placement(out)
        _check_engine_rules(moved, Topology(32, 8, 4, 8))
        changed = (moved.physical_to_logical != served.physical_to_logical).sum(axis=1)
        assert changed.max() <= moves
        after = validate_balance(moved, new, allow_overlap=True).max_mean_load.mean()
        assert after <= before + 1e-9
        if moves == 0:
            np.testing.assert_array_equal(moved.physical_to_logical, served.physical_to_logical)
        else:
            assert changed.max() == moves and after < before - 0.005, (moves, after, before)
        if mode == "nodes":
            node_of_slot = np.arange(40) // 10
            for old, row in zip(served.physical_to_logical, moved.physical_to_logical, strict=True):
                for group in range(8):
                    assert set(node_of_slot[(row // 4) == group]) <= set(node_of_slot[(old // 4) == group])


def test_plan_records_balance_on_held_out_load_records(records, tmp_path):
    assert import_load(records, ["prefill_a", "prefill_b"], tmp_path / "fit.npz").exit_code == 0
    assert import_load(records, ["decode_c"], tmp_path / "held.npz").exit_code == 0
    out = tmp_path / "p.yaml"
    args = ["plan", tmp_path / "fit.npz", "--devices", 8, "--redundant-slots", 8, "--group-mode", "free"]
    result = run(*args, "--holdout", tmp_path / "held.npz", "--out", out)
    assert result.exit_code == 0, result.output
    recorded = load_placement(out).validation
    scored = json.loads(run("validate", out, tmp_path / "held.npz", "--json").stdout)
    assert recorded["max_mean_load"] == scored["max_mean_load"]
    assert list(recorded["workloads"]) == ["decode_c"]
    refused(run(*args, "--holdout", tmp_path / "held.npz", "--step", "prefill", "--out", tmp_path / "q.yaml"))


# --- group mode auto: the serving step of both modes, on routing fitted to the load --------------


def test_routing_fitted_to_load_matches_it_and_keeps_the_group_limit():
    # hot experts at 4x: routable (12x would ask one expert of more than every token's top-4)
    stats = read_load_counts([workload_counts(0, factor=4), workload_counts(1, factor=4)])
    load = stats.pooled_load()
    fitted = routing_from_load(load, stats.meta, np.full(40, 100), seed=3)
    ids = np.asarray(fitted.trace.topk_ids)
    assert ids.shape == (4000, 5, 4) and fitted.trace.num_documents == 40
    shares = load / load.sum(axis=1, keepdims=True)
    for layer in range(5):
        drawn = np.bincount(ids[:, layer].ravel(), minlength=32) / ids[:, layer].size
        assert 0.5 * np.abs(drawn - shares[layer]).sum() == pytest.approx(fitted.distance[layer])
    assert fitted.distance.max() <= 0.01  # within 1% of the recorded load, every layer
    assert (np.diff(np.sort(ids, axis=-1), axis=-1) > 0).all()  # k distinct experts a token
    groups = np.sort(ids // 4, axis=-1)  # 8 groups of 4 experts, a token's from its 4 best groups
    assert (1 + (np.diff(groups, axis=-1) != 0).sum(axis=-1)).max() <= 4
    again = routing_from_load(load, stats.meta, np.full(40, 100), seed=3)
    np.testing.assert_array_equal(np.asarray(again.trace.topk_ids), ids)
    other = routing_from_load(load, stats.meta, np.full(40, 100), seed=4)
    assert not np.array_equal(np.asarray(other.trace.topk_ids), ids)


def test_filling_documents_keep_every_batch_full():
    for workload in (Workload("prefill", tokens_per_rank=64), Workload("decode", requests_per_rank=8)):
        lengths = filling_documents(workload, 4, 1000)
        step, rank = schedule(np.concatenate([[0], np.cumsum(lengths)]), 4, workload)
        batches = np.bincount(step * 4 + rank).reshape(-1, 4)
        assert (batches == workload.batch).all() and batches.shape[0] >= 2 and lengths.sum() >= 1000


STEP_FLAGS = ["--step", "prefill", "--tokens-per-rank", 64, "--hidden", 256, "--intermediate", 128]


@pytest.mark.slow
def test_group_mode_auto_prices_both_modes_and_keeps_the_cheaper(records, tmp_path):
    assert import_load(records, ["prefill_a", "prefill_b", "decode_c"], tmp_path / "load.npz").exit_code == 0
    out = tmp_path / "p.yaml"
    args = ["plan", tmp_path / "load.npz", "--devices", 8, "--nodes", 4, "--redundant-slots", 8]
    result = run(*args, "--group-mode", "auto", *STEP_FLAGS, "--out", out)
    assert result.exit_code == 0, result.output
    assert "synthetic routing fitted to the recorded load" in result.output
    assert "nodes " in result.output and "free " in result.output and "chose group mode" in result.output
    placement = load_placement(out)
    auto = placement.options["group_mode_auto"]
    seconds = auto["step_seconds"]
    assert set(seconds) == {"nodes", "free"} and seconds[auto["chose"]] == min(seconds.values())
    assert placement.groups_on_nodes == (8 if auto["chose"] == "nodes" else 1)
    _check_engine_rules(placement, Topology(32, 8, 4, 8))
    # the chosen mode's placement is what that mode plans on its own
    alone = tmp_path / "alone.yaml"
    assert run(*args, "--group-mode", auto["chose"], "--out", alone).exit_code == 0
    np.testing.assert_array_equal(load_placement(alone).physical_to_logical, placement.physical_to_logical)
    again = tmp_path / "again.yaml"
    assert run(*args, "--group-mode", "auto", *STEP_FLAGS, "--out", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    "extra, problem",
    [
        ([], "needs --step"),
        ([*STEP_FLAGS, "--load-tolerance", "auto"], "drop --from and --load-tolerance auto"),
    ],
)
def test_group_mode_auto_needs_a_step_and_plans_alone(records, tmp_path, extra, problem):
    assert import_load(records, ["prefill_a", "decode_c"], tmp_path / "load.npz").exit_code == 0
    args = ["plan", tmp_path / "load.npz", "--devices", 8, "--nodes", 4, "--group-mode", "auto"]
    refused(run(*args, *extra, "--out", tmp_path / "p.yaml"), "--group-mode auto", problem)
    assert not (tmp_path / "p.yaml").exists()


def test_group_mode_auto_needs_groups_and_nodes(records, tmp_path):
    assert import_load(records, ["prefill_a", "decode_c"], tmp_path / "load.npz").exit_code == 0
    args = ["plan", tmp_path / "load.npz", "--devices", 8, "--group-mode", "auto", *STEP_FLAGS]
    refused(run(*args, "--out", tmp_path / "p.yaml"), "load.npz", "--nodes 2 or more")

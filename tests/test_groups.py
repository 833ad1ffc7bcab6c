"""Group-limited routing (DeepSeek-V3): traces that say so, placements that keep groups whole."""

import dataclasses

import numpy as np
import pytest

import moeplace
from conftest import run
from moeplace.calibrate.synthetic import SyntheticSpec, generate
from moeplace.calibrate.trace import TraceMeta
from moeplace.calibrate.trace_io import save_trace
from moeplace.errors import MoeplaceError
from moeplace.planner.groups import num_regions, restrict, solve_grouped
from moeplace.planner.objective import fanout
from moeplace.planner.replan import replan
from moeplace.planner.solvers import SOLVERS

G, K = 8, 2  # 8 groups of 8 experts; a token's 4 experts from at most 2 groups


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """A group-limited synthetic trace (for structure only, never quality), split in halves."""
    path = tmp_path_factory.mktemp("grouped") / "trace"
    generate(SyntheticSpec(64, 4, 2, 6000, 60, routing_groups=G, groups_per_token=K), path)
    trace = moeplace.load_trace(path)
    return trace, *moeplace.split_documents(trace, 0.5, 0)


def test_the_generator_routes_within_the_groups_and_says_so(grouped):
    trace, _, _ = grouped
    assert trace.meta.group_limit == (G, K)
    groups = np.sort(np.asarray(trace.topk_ids) // (64 // G), axis=-1)
    distinct = 1 + (np.diff(groups, axis=-1) != 0).sum(axis=-1)
    assert distinct.max() == K and distinct.min() == 1


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["frequency", "greedy-capped", "eplb"])
@pytest.mark.parametrize("redundant", [0, 16])
def test_group_modes_keep_every_token_within_its_group_bound_of_nodes(grouped, solver, redundant):
    _, fit, held = grouped
    stats = moeplace.compute_statistics(fit)
    topology = moeplace.Topology(64, 16, 4, redundant)  # 4 nodes: 2 groups a node
    most = {}
    for mode in ("nodes", "permutable", "free"):
        options = moeplace.SolverOptions(load_tolerance=0.3, group_mode=mode)
        placement = moeplace.plan(stats, topology, solver, options)
        most[mode] = moeplace.validate(placement, held).score.headline.most_nodes_a_token
        if mode != "free":
            assert placement.options["routing_groups"] == G
            for layer, slots in zip(placement.layers, placement.physical_to_logical, strict=True):
                # every copy of a group's experts on the devices of the group's region
                region = np.asarray(layer.solver_report["routing_groups"]["region_of_group"])
                device = np.arange(slots.size) // topology.slots_per_device
                per_region = topology.num_devices // (region.max() + 1)
                np.testing.assert_array_equal(device // per_region, region[slots // (64 // G)])
    assert most["nodes"] <= K and most["permutable"] <= K
    assert most["free"] > K  # the bound is the placement's doing: without the groups, tokens spread


def test_regions_split_the_fan_out_exactly(grouped):
    _, fit, _ = grouped
    layer = moeplace.compute_statistics(fit).layer(0)
    device = np.random.default_rng(0).permutation(np.arange(64) % 16)  # any placement
    experts = [np.flatnonzero(device // 4 == node) for node in range(4)]  # 4 regions of 4 devices
    parts = sum(fanout(restrict(layer, e).topk_sets, device[e] % 4) for e in experts)
    assert parts == fanout(layer.topk_sets, device)
    part = restrict(layer, experts[1])
    np.testing.assert_array_equal(part.load, layer.load[experts[1]])
    np.testing.assert_array_equal(part.coact, layer.coact[np.ix_(experts[1], experts[1])])


def test_regions_share_the_layers_search_budget(grouped):
    """``search_steps`` and ``time_limit`` are per layer: a layer of 4 regions gives each a quarter
    (else grouped ``refine`` would search 4x as long as the plain one)."""
    _, fit, _ = grouped
    layer = moeplace.compute_statistics(fit).layer(0)
    seen = []

    def spy(stats, topology, options):
        seen.append((options.search_steps, options.time_limit))
        return SOLVERS["frequency"].solve(stats, topology, options)

    options = moeplace.SolverOptions(search_steps=2000, time_limit=2.0, routing_groups=G)
    solve_grouped(spy, layer, moeplace.Topology(64, 16, 4), options)
    assert seen == [(500, 0.5)] * 4


def test_groups_that_cannot_stay_whole_are_refused(grouped):
    _, fit, _ = grouped
    stats = moeplace.compute_statistics(fit, resamples=0)
    with pytest.raises(MoeplaceError, match="8 routing groups do not split evenly over 16 nodes"):
        moeplace.plan(stats, moeplace.Topology(64, 16, 16), "frequency")
    with pytest.raises(MoeplaceError, match="a checkpoint permutation needs one to divide the other"):
        num_regions(moeplace.Topology(96, 12), 8, "permutable")
    served = moeplace.plan(stats, moeplace.Topology(64, 16, 4), "frequency")
    with pytest.raises(MoeplaceError, match="may split routing groups"):
        replan(stats, served, 4, moeplace.SolverOptions())
    free = moeplace.plan(
        stats, moeplace.Topology(64, 16, 16), "frequency", moeplace.SolverOptions(group_mode="free")
    )
    assert "routing_groups" not in free.options


def test_trace_metadata_carries_the_groups_and_refuses_impossible_ones():
    meta = TraceMeta("m", 64, 4, (0,), routing_groups=8, groups_per_token=2)
    assert TraceMeta.from_dict(meta.to_dict()) == meta
    assert "routing_groups" not in TraceMeta("m", 64, 4, (0,)).to_dict()  # older fingerprints stay
    bad_groups = [(8, None), (7, 2), (8, 8), (32, 1)]  # alone; not dividing; all groups; too few experts
    for groups, per_token in bad_groups:
        with pytest.raises(MoeplaceError, match="metadata"):
            TraceMeta("m", 64, 4, (0,), routing_groups=groups, groups_per_token=per_token)


@pytest.mark.slow
def test_plan_reads_or_overrides_the_groups_and_reports_the_bound(grouped, tmp_path):
    trace, fit, held = grouped
    save_trace(fit, tmp_path / "fit.npz")
    save_trace(held, tmp_path / "held.npz")
    args = ["plan", tmp_path / "fit.npz", "--devices", 16, "--nodes", 4, "--load-tolerance", 0.3]
    result = run(*args, "--holdout", tmp_path / "held.npz", "--out", tmp_path / "p.yaml")
    assert result.exit_code == 0, result.output
    assert f"the routing's groups allow {K})" in result.output
    assert moeplace.load_placement(tmp_path / "p.yaml").options["routing_groups"] == G
    result = run(*args, "--groups", 1, "--out", tmp_path / "free.yaml")
    assert (
        result.exit_code == 0
        and "routing_groups" not in moeplace.load_placement(tmp_path / "free.yaml").options
    )
    result = run(*args, "--groups", 4, "--groups-per-token", 2, "--out", tmp_path / "g4.yaml")
    assert moeplace.load_placement(tmp_path / "g4.yaml").options["routing_groups"] == 4
    bad = run(*args, "--groups", 4, "--out", tmp_path / "bad.yaml")
    assert bad.exit_code == 2 and "--groups G needs --groups-per-token K" in bad.stderr
    assert not (tmp_path / "bad.yaml").exists()
    assert dataclasses.replace(trace.meta, routing_groups=None, groups_per_token=None).group_limit is None

"""Multi-node topology: nodes/token, and the node cost in the exact local search."""

import dataclasses

import numpy as np
import pytest

from conftest import first_layers, make_trace
from moeplace.errors import MoeplaceError
from moeplace.planner.objective import fanout
from moeplace.planner.plan import plan
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.solvers.caps import load_caps
from moeplace.planner.solvers.refine import SwapSearch
from moeplace.planner.topology import Topology
from moeplace.validators.report import validate
from moeplace.validators.score import score_placement


def test_nodes_per_token_counts_distinct_nodes():
    ids = np.array([[0, 2], [0, 7], [4, 6], [1, 3]])  # 8 experts, 4 devices of 2, 2 nodes of 2 devices
    trace = make_trace(ids, [4], num_experts=8)
    score = score_placement(np.array([np.arange(8)]), trace, Topology(8, 4, num_nodes=2))
    np.testing.assert_allclose(score.dev_per_token, [(2 + 2 + 2 + 2) / 4])
    np.testing.assert_allclose(score.node_per_token, [(1 + 2 + 1 + 1) / 4])


@pytest.mark.parametrize("nodes", [0, 3])
def test_nodes_must_divide_the_devices(nodes):
    with pytest.raises(MoeplaceError, match=r"num_nodes .* must be at least 1 and divide"):
        Topology(32, 4, num_nodes=nodes)


def test_swap_deltas_with_node_cost_are_exact(real_stats):
    stats, topology, cost = real_stats.layer(9), Topology(32, 8, num_nodes=2), 3.0
    search = SwapSearch.build(stats.topk_sets, topology, load_caps(stats, topology, 0.1), node_cost=cost)
    placement = np.random.default_rng(0).permutation(32) // 4
    delta = search.swap_deltas(placement)

    def objective(p):
        return fanout(stats.topk_sets, p) + cost * fanout(stats.topk_sets, p // 4)

    for a in range(32):
        for b in range(32):
            if placement[a] != placement[b]:
                swapped = placement.copy()
                swapped[a], swapped[b] = swapped[b], swapped[a]
                assert delta[a, b] == pytest.approx(objective(swapped) - objective(placement))


@pytest.mark.slow
def test_node_cost_cuts_cross_node_fanout_on_held_out_documents(real_split, real_stats):
    """2 nodes x 4 devices: weighing a node above a device lowers held-out nodes/token."""
    layers = 4
    stats, held = first_layers(real_stats, layers), real_split[1]
    held = dataclasses.replace(
        held,
        topk_ids=np.ascontiguousarray(held.topk_ids[:, :layers]),
        meta=dataclasses.replace(held.meta, layer_ids=held.meta.layer_ids[:layers]),
    )
    topology = Topology(32, 8, num_nodes=2)
    nodes_per_token = {}
    for cost in (0.0, 4.0):
        options = SolverOptions(load_tolerance=0.1, search_steps=100, time_limit=0.2, node_cost=cost)
        placement = plan(stats, topology, "refine", options, {})
        assert placement.num_nodes == 2
        nodes_per_token[cost] = validate(placement, held).score.node_per_token.mean()
    assert nodes_per_token[4.0] < nodes_per_token[0.0]

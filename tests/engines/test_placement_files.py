"""Placement files as the engines load them: SGLang's and vllm-ascend's own loading code, run on
what ``moeplace export`` writes for placements of every solver, with and without replicas and nodes.

A model of 5 hidden layers whose layers 1 and 3 are MoE (the others dense, as DeepSeek's first
layer is), 32 experts on 4 EP ranks (and, with 4 replicas, on 6: D need not divide N); routing
from the real gpt-oss trace (its first two layers).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from harness import sglang, vllm_ascend

from conftest import random_trace
from moeplace.calibrate.stats import compute_statistics
from moeplace.deploy.engines import check_sglang_map, export, tensorrt_llm_load_balancer
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement
from moeplace.planner.plan import plan
from moeplace.planner.solvers import SOLVERS, SolverOptions
from moeplace.planner.topology import Topology

pytestmark = pytest.mark.engines

HIDDEN, MOE_LAYERS, EP = 5, (1, 3), 4
OPTIONS = SolverOptions(load_tolerance=0.2, time_limit=0.2, search_steps=50)
CASES = [
    (solver, redundant, nodes, EP)
    for solver in SOLVERS
    for redundant in (0, EP)
    for nodes in ((1,) if solver == "exact" else (1, 2))  # exact does not model nodes
] + [("eplb", 4, nodes, 6) for nodes in (1, 2)]  # 32 experts + 4 replicas on 6 ranks: D does not divide N


def as_model(placement: Placement) -> Placement:
    """The placement's two MoE layers as layers 1 and 3 of a 5-layer model."""
    layers = tuple(
        dataclasses.replace(layer, layer_id=layer_id)
        for layer, layer_id in zip(placement.layers, MOE_LAYERS, strict=True)
    )
    return dataclasses.replace(placement, layers=layers, num_hidden_layers=HIDDEN)


@pytest.fixture(scope="module")
def placements(real_stats):
    """``{(solver, R, nodes, D): Placement}`` for every case."""
    two = dataclasses.replace(
        real_stats,
        meta=dataclasses.replace(real_stats.meta, layer_ids=real_stats.meta.layer_ids[:2]),
        load=real_stats.load[:2],
        coact=real_stats.coact[:2],
        load_resamples=real_stats.load_resamples[:2],
        topk_sets=real_stats.topk_sets[:2],
    )
    small = compute_statistics(random_trace(experts=8, top_k=2, layers=2))  # exact solves small layers
    out = {}
    for solver, redundant, nodes, devices in CASES:
        stats, experts = (small, 8) if solver == "exact" else (two, 32)
        topology = Topology(experts, devices, nodes, redundant)
        out[solver, redundant, nodes, devices] = as_model(plan(stats, topology, solver, OPTIONS, {}))
    return out


@pytest.mark.parametrize("version", ["0.5.23", "0.5.2"])
@pytest.mark.parametrize("a2a", ["deepep", "none"])
def test_sglang_places_and_dispatches_as_the_file_says(placements, tmp_path, version, a2a):
    """Every rank: SGLang's map is the file's; static dispatch (0.5.2 always; 0.5.23 with an a2a
    backend) and dynamic dispatch (0.5.23 without one) send each expert to a slot holding it whose
    rank's own weight loader filled it."""
    dispatch = "static" if a2a != "none" or version == "0.5.2" else "dynamic"
    for (solver, redundant, nodes, ep), placement in placements.items():
        path = tmp_path / f"{solver}-{redundant}-{nodes}-{ep}.json"
        export(placement, "sglang", path)
        table = np.array(json.loads(path.read_text())["physical_to_logical_map"])
        n = placement.num_experts
        np.testing.assert_array_equal(table[list(MOE_LAYERS)], placement.physical_to_logical)
        with sglang(
            version,
            num_hidden_layers=HIDDEN,
            num_experts=n,
            ep_size=ep,
            redundant=redundant,
            a2a_backend=a2a,
            dispatch=dispatch,
        ) as engine:
            metas = [engine.metadata(rank, str(path)) for rank in range(ep)]
            per_rank = metas[0].num_physical_experts // ep
            for layer in MOE_LAYERS:
                loaded = {p for rank in range(ep) for p in engine.loaded_slots(metas[rank], rank, layer)}
                for rank, meta in enumerate(metas):
                    np.testing.assert_array_equal(meta.physical_to_logical_map.numpy(), table)
                    assert per_rank == placement.topology.slots_per_device
                    if dispatch == "static":
                        targets = meta.logical_to_rank_dispatch_physical_map[layer].numpy()  # [N]
                    else:
                        targets = meta.logical_to_all_physical_map[layer].numpy()  # [N, copies]
                    for expert in range(n):
                        slots = np.atleast_1d(targets[expert])
                        slots = slots[slots >= 0]
                        assert slots.size and np.all(table[layer, slots] == expert), (solver, rank, expert)
                        assert set(slots.tolist()) <= loaded, (solver, redundant, nodes, rank, expert)


def test_sglang_a2a_with_two_copies_on_one_rank_dispatches_to_an_empty_slot(tmp_path):
    """The failure the exporter refuses, shown on SGLang 0.5.23's own code: rank 0 holds expert 0
    twice; its loader fills one copy, another rank's static dispatch picks the other."""
    row = [0, 1, 2, 3, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 1, 2, 3]  # 16 experts, R = 4
    path = tmp_path / "repeat.json"
    path.write_text(json.dumps({"physical_to_logical_map": [[*range(16), 0, 1, 2, 3], row]}))
    with sglang(
        "0.5.23", num_hidden_layers=2, num_experts=16, ep_size=4, redundant=4, a2a_backend="deepep"
    ) as engine:
        metas = [engine.metadata(rank, str(path)) for rank in range(4)]
        loaded = {p for rank in range(4) for p in engine.loaded_slots(metas[rank], rank, 1)}
        targets = {int(meta.logical_to_rank_dispatch_physical_map[1, 0]) for meta in metas}
    assert 4 not in loaded and 4 in targets
    with pytest.raises(MoeplaceError, match="EP rank 0 holds 2 slots of expert 0"):
        check_sglang_map(np.array([[*range(16), 0, 1, 2, 3], row]), 16, 4, 2)


def test_vllm_ascend_with_two_copies_on_rank_0_points_log2phy_at_wrong_slots(tmp_path):
    """Why the rule holds for vllm-ascend too: its log2phy strides by rank 0's distinct experts."""
    row = [0, 1, 2, 3, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 1, 2, 3]
    doc = {
        "moe_layer_count": 1,
        "layer_list": [
            {
                "layer_id": 0,
                "device_count": 4,
                "device_list": [{"device_id": d, "device_expert": row[5 * d : 5 * d + 5]} for d in range(4)],
            }
        ],
    }
    path = tmp_path / "repeat.json"
    path.write_text(json.dumps(doc))
    with vllm_ascend("0.23.0") as engine:
        config = engine.eplb_config({"expert_map_path": str(path)})
        log2phy = [maps[1].numpy() for maps in engine.rank_maps(config, 0, 16, 4)]
    assert any(np.any(np.array(row)[table] != np.arange(16)) for table in log2phy)


@pytest.mark.parametrize("version", ["0.23.0", "0.30.0rc2"])
def test_vllm_ascend_maps_every_rank_and_log2phy_as_the_file_says(placements, tmp_path, version):
    with vllm_ascend(version) as engine:
        for (solver, redundant, nodes, ep), placement in placements.items():
            path = tmp_path / f"{solver}-{redundant}-{nodes}-{ep}.json"
            export(placement, "vllm-ascend", path)
            config = engine.eplb_config({"expert_map_path": str(path), "num_redundant_experts": redundant})
            spd = placement.topology.slots_per_device
            for ordinal, row in enumerate(placement.physical_to_logical):  # indexed by MoE ordinal
                maps = engine.rank_maps(config, ordinal, placement.num_experts, ep)
                for rank, (local_map, log2phy) in enumerate(maps):
                    local_map, log2phy = local_map.numpy(), log2phy.numpy()
                    mine = row[rank * spd : (rank + 1) * spd]
                    np.testing.assert_array_equal(np.flatnonzero(local_map >= 0), np.sort(mine))
                    np.testing.assert_array_equal(local_map[mine], np.arange(spd))  # the file's slot order
                    np.testing.assert_array_equal(row[log2phy], np.arange(placement.num_experts), solver)


def test_tensorrt_llm_file_matches_its_documented_schema(placements, tmp_path):
    """TensorRT-LLM's config code needs its GPU wheel (not on PyPI), so this checks the schema its
    ``MoeLoadBalancerConfig`` and MoE layer document and assert: exactly num_slots,
    initial_global_assignments (model layer -> num_slots experts, every expert present, rank-major)
    and layer_updates_per_iter."""
    for (solver, redundant, nodes, ep), placement in placements.items():
        path = tmp_path / "lb.yaml"
        export(placement, "tensorrt-llm", path)
        doc = yaml.safe_load(path.read_text())
        assert doc == tensorrt_llm_load_balancer(placement)
        assert set(doc) == {"num_slots", "initial_global_assignments", "layer_updates_per_iter"}
        assert doc["num_slots"] % ep == 0 and doc["layer_updates_per_iter"] == 0
        assert list(doc["initial_global_assignments"]) == list(MOE_LAYERS)
        for layer, row in zip(MOE_LAYERS, placement.physical_to_logical, strict=True):
            slots = doc["initial_global_assignments"][layer]
            assert len(slots) == doc["num_slots"] and set(slots) == set(range(placement.num_experts))
            assert slots == row.tolist(), (solver, redundant, nodes)

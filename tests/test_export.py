"""Engine exports, each loaded the way the engine's own code loads it (reimplemented, cited)."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from moeplace.cli import app
from moeplace.deploy.engines import export, permutation_plan
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import LayerPlacement, Placement, save_placement

N, D, LAYER_IDS, HIDDEN = 16, 4, (1, 2, 4), 6


def make_placement(num_hidden_layers=HIDDEN, seed=0) -> Placement:
    rng = np.random.default_rng(seed)
    layers = tuple(
        LayerPlacement(layer_id, rng.permutation(np.arange(N) % D), rng.integers(0, 100, N))
        for layer_id in LAYER_IDS
    )
    return Placement(
        model="test/tiny",
        num_experts=N,
        top_k=2,
        num_devices=D,
        solver="random",
        options={},
        calibration={},
        layers=layers,
        num_hidden_layers=num_hidden_layers,
    )


def sglang_load(path, num_logical, ep_size, num_redundant=0):
    """SGLang's start-up path for ``--init-expert-location FILE``; returns ``physical_to_logical_map``.

    Reimplemented from sgl-project/sglang python/sglang/srt/eplb/expert_location.py:
    ``compute_initial_expert_location_metadata`` (.pt via ``torch.load(weights_only=True)``, .json via
    ``json.loads``; the dict's keys become keyword arguments of ``init_by_mapping``),
    ``_init_common`` (physical = logical + redundant, divisible by ep_size),
    ``_compute_logical_to_all_physical_map`` (indexes the logical id), ``_init_raw`` and
    ``compute_logical_to_rank_dispatch_physical_map`` (static dispatch: a same-GPU slot, else
    ``_fair_choices`` among all slots, which divides by their count), and ``__post_init__``.
    """
    path = str(path)
    data = torch.load(path, weights_only=True) if path.endswith(".pt") else json.loads(Path(path).read_text())
    assert "physical_to_logical_map" in data

    def init_by_mapping(physical_to_logical_map):  # any other key would be a TypeError
        return (
            torch.tensor(physical_to_logical_map)
            if not torch.is_tensor(physical_to_logical_map)
            else (physical_to_logical_map)
        )

    table = init_by_mapping(**data)
    num_physical = num_logical + num_redundant
    assert num_physical % ep_size == 0
    num_layers, width = table.shape
    logical_to_all = [[[] for _ in range(num_logical)] for _ in range(num_layers)]
    for layer in range(num_layers):
        for physical in range(width):
            logical_to_all[layer][table[layer, physical].item()].append(physical)
    local = num_physical // ep_size
    r = random.Random(42)
    for layer in range(num_layers):
        for logical in range(num_logical):
            candidates = logical_to_all[layer][logical]
            dispatch = [next((p for p in candidates if p // local == gpu), -1) for gpu in range(ep_size)]
            remain = dispatch.count(-1)
            quotient, remainder = divmod(remain, len(candidates))
            assert len(candidates * quotient + r.sample(candidates, k=remainder)) == remain
    assert width == num_physical
    return table


def test_sglang_json_and_pt_load_as_sglang_does(tmp_path):
    placement = make_placement()
    for name in ("loc.json", "loc.pt"):
        export(placement, "sglang", tmp_path / name)
        table = sglang_load(tmp_path / name, N, ep_size=D)
        assert table.shape == (HIDDEN, N)
        for position, layer_id in enumerate(LAYER_IDS):
            row = table[layer_id].numpy()
            # slot p lives on rank p // (P / ep_size): the device the placement chose
            np.testing.assert_array_equal(np.arange(N) // (N // D), placement.expert_to_device[position][row])
        for dense in sorted(set(range(HIDDEN)) - set(LAYER_IDS)):
            np.testing.assert_array_equal(table[dense].numpy(), np.arange(N))  # SGLang's trivial map


def test_sglang_needs_the_model_layer_count(tmp_path):
    with pytest.raises(MoeplaceError, match="--num-hidden-layers"):
        export(make_placement(num_hidden_layers=None), "sglang", tmp_path / "x.json")
    with pytest.raises(MoeplaceError, match="MoE layer 4"):
        export(make_placement(num_hidden_layers=None), "sglang", tmp_path / "x.json", num_hidden_layers=4)
    export(make_placement(num_hidden_layers=None), "sglang", tmp_path / "x.json", num_hidden_layers=5)
    assert sglang_load(tmp_path / "x.json", N, D).shape == (5, N)
    assert not (tmp_path / "x.pt").exists()


def test_permutation_plan_realizes_the_placement_contiguously():
    placement = make_placement()
    plan = permutation_plan(placement)
    assert [layer["layer"] for layer in plan["layers"]] == list(LAYER_IDS)
    for position, layer in enumerate(plan["layers"]):
        new_to_old = np.array(layer["new_to_old"])
        assert sorted(new_to_old) == list(range(N))
        np.testing.assert_array_equal(
            placement.expert_to_device[position][new_to_old], np.arange(N) // (N // D)
        )


def test_export_cli_writes_and_refuses_bad_format(tmp_path):
    save_placement(make_placement(), tmp_path / "p.yaml")
    runner = CliRunner()
    result = runner.invoke(
        app, ["export", str(tmp_path / "p.yaml"), "--format", "sglang", "--out", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 0, result.output
    assert sglang_load(tmp_path / "s.json", N, D).shape == (HIDDEN, N)
    result = runner.invoke(
        app, ["export", str(tmp_path / "p.yaml"), "--format", "trt", "--out", str(tmp_path / "t.json")]
    )
    assert result.exit_code == 2 and "--format must be one of" in result.output
    assert not (tmp_path / "t.json").exists()

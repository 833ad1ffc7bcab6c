"""Engine exports: what the files hold. The engines' own code judges them in ``tests/engines``."""

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import read_sglang_map
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


@pytest.mark.parametrize("name", ["loc.json", "loc.pt"])
def test_sglang_json_and_pt_hold_a_row_per_hidden_layer(tmp_path, name):
    if name.endswith(".pt"):
        pytest.importorskip("torch")
    placement = make_placement()
    export(placement, "sglang", tmp_path / name)
    table = read_sglang_map(tmp_path / name)
    assert table.shape == (HIDDEN, N)
    for position, layer_id in enumerate(LAYER_IDS):
        row = table[layer_id]
        # slot p lives on rank p // (P / ep_size): the device the placement chose
        np.testing.assert_array_equal(np.arange(N) // (N // D), placement.expert_to_device[position][row])
    for dense in sorted(set(range(HIDDEN)) - set(LAYER_IDS)):
        np.testing.assert_array_equal(table[dense], np.arange(N))  # SGLang's trivial map


def test_sglang_needs_the_model_layer_count(tmp_path):
    with pytest.raises(MoeplaceError, match="give num_hidden_layers"):
        export(make_placement(num_hidden_layers=None), "sglang", tmp_path / "x.json")
    with pytest.raises(MoeplaceError, match="MoE layer 4"):
        export(make_placement(num_hidden_layers=None), "sglang", tmp_path / "x.json", num_hidden_layers=4)
    export(make_placement(num_hidden_layers=None), "sglang", tmp_path / "x.json", num_hidden_layers=5)
    assert read_sglang_map(tmp_path / "x.json").shape == (5, N)
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
    assert read_sglang_map(tmp_path / "s.json").shape == (HIDDEN, N)
    result = runner.invoke(
        app, ["export", str(tmp_path / "p.yaml"), "--format", "trt", "--out", str(tmp_path / "t.json")]
    )
    assert result.exit_code == 2 and "'trt' is not one of" in result.output
    assert not (tmp_path / "t.json").exists()


def test_export_prints_the_engine_flags_and_refuses_a_contradicting_layer_count(tmp_path):
    """The README's old example exported a 24-layer model's placement with 27 rows, silently."""
    save_placement(make_placement(), tmp_path / "p.yaml")
    runner = CliRunner()

    def export_cli(*args):
        return runner.invoke(app, ["export", str(tmp_path / "p.yaml"), *map(str, args)])

    result = export_cli("--format", "sglang", "--out", tmp_path / "s.json")
    assert f"{HIDDEN} rows, one per hidden layer (recorded in the placement)" in result.output
    assert f"--ep-size {D} --ep-num-redundant-experts 0 --init-expert-location {tmp_path / 's.json'}" in (
        result.output
    )
    refused = export_cli(
        "--format", "sglang", "--num-hidden-layers", HIDDEN + 1, "--out", tmp_path / "x.json"
    )
    assert refused.exit_code == 2 and f"the placement records {HIDDEN} layers" in refused.stderr
    assert not (tmp_path / "x.json").exists()
    result = export_cli("--format", "vllm-ascend", "--out", tmp_path / "v.json")
    assert (
        '"eplb_config": {"expert_map_path": ' in result.output
        and '"num_redundant_experts": 0' in result.output
    )
    result = export_cli("--format", "tensorrt-llm", "--out", tmp_path / "lb.yaml")
    assert result.exit_code == 0 and "load_balancer: " in result.output
    doc = yaml.safe_load((tmp_path / "lb.yaml").read_text())
    assert doc["num_slots"] == N and list(doc["initial_global_assignments"]) == list(LAYER_IDS)

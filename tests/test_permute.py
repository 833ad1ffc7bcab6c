"""Checkpoint permutation on tiny Hugging Face MoE models built in-process, saved, permuted, reloaded."""

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")

from safetensors import safe_open
from safetensors.numpy import save_file

from conftest import TINY_MOE_FAMILIES
from moeplace.calibrate.capture import find_routers
from moeplace.deploy import permute
from moeplace.deploy.permute import (
    MARKER,
    check_group_safe,
    permute_checkpoint,
    read_permutation,
    routing_groups,
)
from moeplace.errors import MoeplaceError

N, D = 8, 4  # experts per MoE layer, devices: N // D experts per device under contiguous layout
INPUT = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
NO_GROUPS = dict(n_group=1, topk_group=1, topk_method="greedy")  # DeepSeek-V2: plain top-k


def at(path, problem):
    """Pattern for the one-line error ``"<path>: <problem>"`` (problem is a regex)."""
    return f"^{re.escape(str(path))}: {problem}"


def causal_lm(family, dtype=torch.float32, **overrides):
    """Tiny random model; every bias randomized (zero init would hide a bias left unpermuted)."""
    config = TINY_MOE_FAMILIES[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = hf.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("bias") and ".mlp." in name:  # router, expert and correction biases
                tensor.normal_(std=0.3)
        for _, router in find_routers(model):  # default init routes nearly every token alike
            router.weight.normal_()
    return model.to(dtype)


def saved(model, path, shard_size=None):
    model.save_pretrained(path, **({"max_shard_size": shard_size} if shard_size else {}))
    return path


def run(model):
    """Logits ``[B, T, V]`` and each MoE layer's chosen experts ``{layer: int [B*T, k]}`` (sorted)."""
    chosen, hooks = {}, []
    for layer, router in find_routers(model):
        hook = lambda m, i, out, layer=layer: chosen.__setitem__(layer, out[-1].sort(-1).values.numpy())  # noqa: E731
        hooks.append(router.register_forward_hook(hook))
    with torch.no_grad():
        logits = model(input_ids=INPUT).logits
    for hook in hooks:
        hook.remove()
    return logits, chosen


def placement(layer_ids):
    """A random balanced expert->device map per layer and the new_to_old that realises it contiguously."""
    rng = np.random.default_rng(7)
    devices = {layer: rng.permutation(np.arange(N) % D) for layer in layer_ids}
    return devices, {layer: np.argsort(dev, kind="stable") for layer, dev in devices.items()}


def load(path):
    model, info = hf.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    return model.eval()


CASES = [(f, None) for f in ("mixtral", "olmoe", "qwen3_moe", "qwen2_moe", "gpt_oss", "deepseek_v2")]


@pytest.mark.parametrize(("family", "shards"), [*CASES, ("qwen2_moe", "4KB"), ("gpt_oss", "4KB")])
def test_permuted_checkpoint_computes_the_same_and_realises_the_placement(tmp_path, family, shards):
    model = causal_lm(family, **(NO_GROUPS if family == "deepseek_v2" else {}))
    src = saved(model, tmp_path / "src", shards)
    layer_ids = [layer for layer, _ in find_routers(model)]
    expert_to_device, new_to_old = placement(layer_ids)
    report = permute_checkpoint(src, tmp_path / "dst", new_to_old)
    permuted = load(tmp_path / "dst")

    (old_logits, old_ids), (new_logits, new_ids) = run(model), run(permuted)
    torch.testing.assert_close(new_logits, old_logits, atol=1e-5, rtol=1e-5)
    for layer in layer_ids:
        assert len(np.unique(old_ids[layer], axis=0)) > 4  # tokens do route differently
        old_to_new = np.argsort(new_to_old[layer])
        np.testing.assert_array_equal(new_ids[layer], np.sort(old_to_new[old_ids[layer]], axis=-1))
        np.testing.assert_array_equal(  # contiguous layout: new slot j on device j // (N/D)
            np.sort(new_ids[layer] // (N // D), -1), np.sort(expert_to_device[layer][old_ids[layer]], -1)
        )
    assert sorted(report["layers"]) == layer_ids
    assert {entry["num_experts"] for entry in report["layers"].values()} == {N}
    for name in ("config.json", "generation_config.json"):
        assert (tmp_path / "dst" / name).read_bytes() == (src / name).read_bytes()
    marker = read_permutation(tmp_path / "dst" / MARKER)
    assert {k: v.tolist() for k, v in marker.items()} == {k: v.tolist() for k, v in new_to_old.items()}
    if shards:
        old_map = json.loads((src / permute.INDEX).read_text())["weight_map"]
        new_map = json.loads((tmp_path / "dst" / permute.INDEX).read_text())["weight_map"]
        assert len(set(new_map.values())) > 2 and set(new_map.values()) == set(old_map.values())
        assert set(new_map) == set(old_map)  # renaming permutes the names within a layer
        for shard in set(new_map.values()):
            with safe_open(tmp_path / "dst" / shard, "np") as f:
                assert set(f.keys()) == {k for k, v in new_map.items() if v == shard}
                assert f.metadata() == {"format": "pt"}


GROUP_SAFE = np.array([7, 6, 2, 3, 5, 4, 0, 1])  # pairs = DeepSeek-V3 groups: moved whole or within
EXPERT = ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
STORED = {  # family: (MoE block of layer 2, router tensors, fused expert tensors, per-expert tensors)
    "gpt_oss": (
        "model.layers.2.mlp.",
        ["router.weight", "router.bias"],
        ["experts.gate_up_proj", "experts.gate_up_proj_bias", "experts.down_proj", "experts.down_proj_bias"],
        [],
    ),
    "deepseek_v3": ("model.layers.2.mlp.", ["gate.weight", "gate.e_score_correction_bias"], [], EXPERT),
    "qwen2_moe": ("model.layers.2.mlp.", ["gate.weight"], [], EXPERT),
    "mixtral": (
        "model.layers.2.block_sparse_moe.",
        ["gate.weight"],
        [],
        ["w1.weight", "w2.weight", "w3.weight"],
    ),
}


def tensors(path):
    with safe_open(path / "model.safetensors", "np") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


@pytest.mark.parametrize("family", list(STORED))
def test_each_tensor_moves_with_its_expert_and_nothing_else_moves(tmp_path, family):
    """What transformers 5 writes per family, and where each tensor must end up (only layer 2 mapped)."""
    block, router, fused, per_expert = STORED[family]
    src = saved(causal_lm(family), tmp_path / "src")
    report = permute_checkpoint(src, tmp_path / "dst", {2: GROUP_SAFE})
    old, new = tensors(src), tensors(tmp_path / "dst")
    assert set(new) == set(old)
    moved = {block + name for name in router + fused}
    moved |= {f"{block}experts.{i}.{name}" for i in range(N) for name in per_expert}
    assert {name for name in old if name.startswith(block)} - moved <= {  # shared experts stay
        f"{block}shared_expert{s}.{name}" for s in ("", "s") for name in EXPERT
    } | {f"{block}shared_expert_gate.weight"}
    assert report["layers"] == {2: {"num_experts": N, "tensors_permuted": len(moved)}}
    for name in router + fused:
        np.testing.assert_array_equal(new[block + name], old[block + name][GROUP_SAFE])
    for j, name in ((j, name) for j in range(N) for name in per_expert):
        np.testing.assert_array_equal(
            new[f"{block}experts.{j}.{name}"], old[f"{block}experts.{GROUP_SAFE[j]}.{name}"]
        )
    for name in set(old) - moved:
        np.testing.assert_array_equal(new[name], old[name])
        assert new[name].dtype == old[name].dtype


def test_deepseek_v3_groups_refuse_a_crossing_permutation_and_accept_a_safe_one(tmp_path, monkeypatch):
    model = causal_lm("deepseek_v3")  # n_group 4 of 2 experts, topk_group 2, random correction bias
    src = saved(model, tmp_path / "src")
    crossing = np.array([0, 2, 1, 3, 4, 5, 6, 7])  # old expert 2 (group 1) into group 0
    with pytest.raises(
        MoeplaceError,
        match=r"config\.json: layer 2: new experts 0-1 \(group 0\) would be old experts \[0, 2\]",
    ):
        permute_checkpoint(src, tmp_path / "dst", {1: GROUP_SAFE, 2: crossing})
    assert not (tmp_path / "dst").exists()

    permute_checkpoint(src, tmp_path / "dst", {1: GROUP_SAFE, 2: np.array([1, 0, 2, 3, 4, 5, 7, 6])})
    (old_logits, old_ids), (new_logits, new_ids) = run(model), run(load(tmp_path / "dst"))
    torch.testing.assert_close(new_logits, old_logits, atol=1e-5, rtol=1e-5)
    assert not np.array_equal(new_ids[1], old_ids[1])  # experts did move

    monkeypatch.setattr(permute, "check_group_safe", lambda *args: None)  # what the refusal prevents:
    permute_checkpoint(src, tmp_path / "dst", {1: GROUP_SAFE, 2: crossing})
    assert (run(load(tmp_path / "dst"))[0] - old_logits).abs().max() > 1e-3  # a different model


def test_which_configs_route_by_group():
    v2 = dict(model_type="deepseek_v2", n_group=4, topk_group=2)
    assert routing_groups(v2 | {"topk_method": "group_limited_greedy"}) == 4
    assert routing_groups(v2 | {"topk_method": "noaux_tc"}) == 4
    assert routing_groups(v2 | {"topk_method": "greedy"}) == 1
    assert routing_groups(v2 | {"topk_method": "greedy", "model_type": "deepseek_v3"}) == 4  # V3 ignores it
    assert routing_groups(v2 | {"topk_group": 4}) == 1  # every group chosen: no limit
    assert routing_groups({"model_type": "mixtral"}) == routing_groups(v2 | {"n_group": 1}) == 1
    assert routing_groups({"text_config": v2}) == 4
    check_group_safe(v2, 3, GROUP_SAFE)
    with pytest.raises(
        MoeplaceError,
        match=r"layer 3: new experts 2-3 \(group 1\) would be old experts \[2, 4\] from groups \[1, 2\]",
    ):
        check_group_safe(v2, 3, np.array([0, 1, 2, 4, 3, 5, 6, 7]))


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """A saved Qwen2-MoE checkpoint: MoE layers 0 and 2, dense layer 1."""
    return saved(causal_lm("qwen2_moe"), tmp_path_factory.mktemp("qwen2") / "src")


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ({0: np.arange(7)}, r"layer 0: the router has 8 experts, new_to_old has 7"),
        ({0: [0, 0, 1, 2, 3, 4, 5, 6]}, r"layer 0: new_to_old is not a permutation of 0\.\.7"),
        ({2: np.arange(8.0)}, r"layer 2: new_to_old is not a permutation"),
        ({1: np.arange(8)}, r"layer 1: no MoE router"),
        ({9: np.arange(8)}, r"layer 9: no MoE router"),
    ],
)
def test_bad_mappings_are_refused(qwen2, tmp_path, mapping, problem):
    with pytest.raises(MoeplaceError, match=at(qwen2, problem)):
        permute_checkpoint(qwen2, tmp_path / "dst", mapping)
    assert not (tmp_path / "dst").exists()


def test_bad_checkpoints_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was loaded"))
    with pytest.raises(MoeplaceError, match=at(tmp_path / "none", r"no such checkpoint directory")):
        permute_checkpoint(tmp_path / "none", tmp_path / "dst", {})
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text("{}")
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(MoeplaceError, match=at(tmp_path / "bin", r"holds pickle weights only")):
        permute_checkpoint(tmp_path / "bin", tmp_path / "dst", {})
    with pytest.raises(MoeplaceError, match=at(tmp_path, r"no model.safetensors")):
        permute_checkpoint(tmp_path, tmp_path / "dst", {})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(MoeplaceError, match=at(tmp_path / "bad" / "model.safetensors", r"not a readable")):
        permute_checkpoint(tmp_path / "bad", tmp_path / "dst", {})
    src = handmade(tmp_path / "cfg", {"layers.0.mlp.gate.weight": np.zeros((N, 2))})
    (src / "config.json").write_text("{")
    with pytest.raises(MoeplaceError, match=at(src / "config.json", r"not a readable JSON")):
        permute_checkpoint(src, tmp_path / "dst", {})
    with pytest.raises(MoeplaceError, match=r"config\.json: not a readable moeplace-permutation JSON file"):
        read_permutation(tmp_path / "bin" / "config.json")
    assert not (tmp_path / "dst").exists()


def test_missing_shard_is_refused(tmp_path):
    src = saved(causal_lm("mixtral"), tmp_path / "src", "4KB")
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(
        MoeplaceError,
        match=at(shard, r"shard listed in model.safetensors.index.json is missing"),
    ):
        permute_checkpoint(src, tmp_path / "dst", {0: np.arange(N)})


def test_only_an_earlier_output_is_replaced_and_a_failure_keeps_it(qwen2, tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(MoeplaceError, match=at(tmp_path / "mine", r"exists and is not an output")):
        permute_checkpoint(qwen2, tmp_path / "mine", {0: np.arange(N)})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"

    dst = tmp_path / "dst"
    first = {0: np.roll(np.arange(N), 1)}
    permute_checkpoint(qwen2, dst, first)
    before = {path.name: path.read_bytes() for path in dst.iterdir()}

    def disk_full(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(permute, "_rewrite_shard", disk_full)
    with pytest.raises(MoeplaceError, match=at(dst, "cannot write it .No space left on device")):
        permute_checkpoint(qwen2, dst, {0: np.arange(N)[::-1]})
    assert {path.name: path.read_bytes() for path in dst.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dst", "mine"]  # no temporary left
    monkeypatch.undo()

    permute_checkpoint(qwen2, dst, {0: np.arange(N)[::-1]})  # an earlier output is replaced
    assert read_permutation(dst / MARKER)[0].tolist() == list(range(N))[::-1]


def test_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
    src = saved(causal_lm("gpt_oss", dtype=torch.bfloat16), tmp_path / "src")
    permute_checkpoint(src, tmp_path / "dst", {1: GROUP_SAFE})
    with (
        safe_open(src / "model.safetensors", "pt") as old,
        safe_open(tmp_path / "dst/model.safetensors", "pt") as new,
    ):
        assert new.metadata() == old.metadata() == {"format": "pt"}
        for name in old.keys():  # noqa: SIM118
            expected = old.get_tensor(name)
            if name.startswith("model.layers.1.mlp.") and "self_attn" not in name:
                expected = expected[torch.from_numpy(GROUP_SAFE)]
            assert new.get_tensor(name).dtype == torch.bfloat16
            assert torch.equal(new.get_tensor(name), expected), name


def handmade(path, tensors, extra_files=()):
    """A checkpoint written directly with safetensors (no model), plus named extra files."""
    path.mkdir()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json", *extra_files):
        (path / name).parent.mkdir(exist_ok=True)
        (path / name).write_text("{}")
    return path


def test_names_without_model_prefix_and_what_is_copied(tmp_path):
    gate = np.random.default_rng(0).random((N, 4), dtype=np.float32)
    experts = {
        f"layers.3.block_sparse_moe.experts.{i}.w1.weight": np.full((2, 4), i, np.float16) for i in range(N)
    }
    src = handmade(
        tmp_path / "src",
        {"layers.3.block_sparse_moe.gate.weight": gate, "embed.weight": gate[:2]} | experts,
        ["pytorch_model.bin", "original/model.safetensors"],
    )
    perm = np.roll(np.arange(N), 3)
    report = permute_checkpoint(src, tmp_path / "dst", {3: perm})
    new = tensors(tmp_path / "dst")
    np.testing.assert_array_equal(new["layers.3.block_sparse_moe.gate.weight"], gate[perm])
    np.testing.assert_array_equal(new["embed.weight"], gate[:2])
    for j in range(N):
        got = new[f"layers.3.block_sparse_moe.experts.{j}.w1.weight"]
        assert got.dtype == np.float16 and (got == perm[j]).all()
    assert report["copied"] == ["config.json", "tokenizer.json"]  # stale weights and folders are not
    assert report["skipped"] == ["original", "pytorch_model.bin"]
    assert {p.name for p in (tmp_path / "dst").iterdir()} == {
        MARKER,
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }


@pytest.mark.parametrize(
    ("tensors_", "problem"),
    [
        (
            {f"layers.0.mlp.experts.{i}.w": np.zeros(2) for i in range(7)},
            r"experts.<i> for 7 indices up to 6; router has 8",
        ),
        (
            {"layers.0.mlp.experts.w": np.zeros((7, 2))},
            r"layers.0.mlp.experts.w has shape \[7, 2\], not 8 experts",
        ),
        ({"layers.0.mlp.shared_experts.w": np.zeros((8, 2))}, r"layer 0: a router but no experts"),
    ],
)
def test_experts_that_do_not_match_the_router_are_refused(tmp_path, tensors_, problem):
    src = handmade(tmp_path / "src", {"layers.0.mlp.gate.weight": np.zeros((N, 2))} | tensors_)
    with pytest.raises(MoeplaceError, match=at(src, ".*" + problem)):
        permute_checkpoint(src, tmp_path / "dst", {0: np.arange(N)})


def test_cli_permutes_by_placement_file_and_refuses_replicas(tmp_path):
    from typer.testing import CliRunner

    from moeplace.cli import app
    from moeplace.planner.placement import LayerPlacement, Placement, save_placement

    model = causal_lm("qwen3_moe")
    src = saved(model, tmp_path / "src")
    layer_ids = [layer for layer, _ in find_routers(model)]
    expert_to_device, _ = placement(layer_ids)
    layers = tuple(
        LayerPlacement(layer, expert_to_device[layer], np.ones(N, np.int64)) for layer in layer_ids
    )
    common = dict(model="tiny", num_experts=N, top_k=2, solver="random", options={}, calibration={})
    save_placement(Placement(num_devices=D, layers=layers, **common), tmp_path / "p.yaml")
    result = CliRunner().invoke(
        app, ["permute-checkpoint", str(src), str(tmp_path / "dst"), "--placement", str(tmp_path / "p.yaml")]
    )
    assert result.exit_code == 0, result.output
    (old_logits, old_ids), (new_logits, new_ids) = run(model), run(load(tmp_path / "dst"))
    torch.testing.assert_close(new_logits, old_logits, atol=1e-5, rtol=1e-5)
    for layer in layer_ids:  # contiguous layout realises the placement file's devices
        np.testing.assert_array_equal(
            np.sort(new_ids[layer] // (N // D), -1), np.sort(expert_to_device[layer][old_ids[layer]], -1)
        )

    runner = CliRunner()  # the same through the permutation plan JSON
    plan_args = [
        "export",
        str(tmp_path / "p.yaml"),
        "--format",
        "permutation",
        "--out",
        str(tmp_path / "p.json"),
    ]
    assert runner.invoke(app, plan_args).exit_code == 0
    result = runner.invoke(
        app, ["permute-checkpoint", str(src), str(tmp_path / "dst3"), "--placement", str(tmp_path / "p.json")]
    )
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", MARKER):
        assert (tmp_path / "dst3" / name).read_bytes() == (tmp_path / "dst" / name).read_bytes()

    slots = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1])  # 8 experts + 2 replicas on 2 devices of 5 slots
    replicated = tuple(
        LayerPlacement(layer, np.array([0, 0, 0, 0, 0, 1, 1, 1]), np.ones(N, np.int64), {}, slots)
        for layer in layer_ids
    )
    save_placement(
        Placement(num_devices=2, layers=replicated, redundant_slots=2, **common), tmp_path / "r.yaml"
    )
    result = CliRunner().invoke(
        app, ["permute-checkpoint", str(src), str(tmp_path / "dst2"), "--placement", str(tmp_path / "r.yaml")]
    )
    assert result.exit_code == 2 and "cannot express replicas" in result.output
    assert not (tmp_path / "dst2").exists()


@pytest.mark.parametrize(
    ("devices", "solver"), [(2, "greedy-capped"), (4, "greedy-capped"), (4, "frequency")]
)
def test_group_mode_permutable_plans_what_permute_checkpoint_realizes_on_deepseek_v3(
    tmp_path, devices, solver
):
    from typer.testing import CliRunner

    import moeplace
    from moeplace.calibrate.capture import capture_routing, trace_meta
    from moeplace.calibrate.corpus import Document
    from moeplace.calibrate.trace_io import trace_writer
    from moeplace.cli import app

    model = causal_lm("deepseek_v3")  # n_group 4 of 2 experts, topk_group 2
    rng = np.random.default_rng(0)
    token_ids = [rng.integers(0, 128, 24) for _ in range(12)]
    with trace_writer(tmp_path / "t", trace_meta(model, "tiny-v3", ["test"], max_length=24)) as writer:
        capture_routing(model, [Document("", f"d{i}") for i in range(12)], token_ids, writer, max_length=24)
    trace = moeplace.load_trace(tmp_path / "t")
    assert trace.meta.group_limit == (4, 2)  # read from the model's config
    options = moeplace.SolverOptions(load_tolerance=1.0, group_mode="permutable")
    topology = moeplace.Topology(N, devices)
    planned = moeplace.plan(moeplace.compute_statistics(trace, resamples=0), topology, solver, options)
    assert planned.options["routing_groups"] == 4 and planned.options["group_mode"] == "permutable"
    assert (planned.expert_to_device != np.arange(N) // (N // devices)).any()  # experts do move
    moeplace.save_placement(planned, tmp_path / "p.yaml")
    src = saved(model, tmp_path / "src")
    args = ["permute-checkpoint", str(src), str(tmp_path / "dst"), "--placement", str(tmp_path / "p.yaml")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (old_logits, old_ids), (new_logits, new_ids) = run(model), run(load(tmp_path / "dst"))
    torch.testing.assert_close(new_logits, old_logits, atol=1e-5, rtol=1e-5)
    for position, layer in enumerate(planned.layer_ids):  # contiguous layout realises the plan's devices
        np.testing.assert_array_equal(
            np.sort(new_ids[layer] // (N // devices), -1),
            np.sort(planned.expert_to_device[position][old_ids[layer]], -1),
        )

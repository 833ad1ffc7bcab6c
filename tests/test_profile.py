"""validators/profile.py: the built-in profiles name a source for every figure (and a profile file
replaces them), a model's sizes read from its config as counted by hand, and the whole step: the
rest of a step is the same for every placement and dilutes, never reverses, what a placement buys."""

import json

import numpy as np
import pytest

from conftest import make_trace
from moeplace.errors import MoeplaceError
from moeplace.planner.topology import Topology
from moeplace.validators.profile import (
    CONFIGS,
    PROFILES,
    SHAPES,
    ModelShape,
    load_profile,
    read_model_shape,
    shape_of,
    step_time,
)
from moeplace.validators.step import FIGURES, StepCost, Workload, attention_context, step_cost

FIGURE_SOURCES = {"tflops", "hbm_tbps", "nvlink.rank/node", "nvlink.expert", "rdma.rank/node", "rdma.expert"}


@pytest.mark.parametrize("name", ["h800", "h100", "h200", "b200"])
def test_every_built_in_figure_has_a_source_and_assumed_ones_say_so(name):
    profile = PROFILES[name]
    assert FIGURE_SOURCES | {"efficiency", "layer_overhead_us"} <= set(profile.sources)
    assert profile.sources["efficiency"].startswith("assumed")
    assert profile.sources["layer_overhead_us"].startswith("assumed")
    assert name in profile.assumptions() and "whole steps" in profile.assumptions()


def test_newer_gpus_are_not_slower_than_older_ones():
    h800, h100, h200, b200 = (PROFILES[n] for n in ("h800", "h100", "h200", "b200"))
    assert h200.hbm_tbps > h100.hbm_tbps == h800.hbm_tbps and b200.tflops > h100.tflops
    assert b200.nvlink["rank"][0] > h100.nvlink["rank"][0] > h800.nvlink["rank"][0]


def test_deepseek_v3_sizes_are_its_config_counted_by_hand():
    v3 = SHAPES["deepseek-ai/DeepSeek-V3"]
    # q_a 7168 x 1536, q_b 1536 x 128 x 192, kv_a 7168 x 576, kv_b 512 x 128 x 256, o 128 x 128 x 7168
    assert (
        v3.attention_params
        == 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168
    )
    assert (v3.dense_layers, v3.dense_intermediate, v3.shared_intermediate) == (3, 18432, 2048)
    assert v3.kv_bytes == 2 * (512 + 64) and v3.num_experts == 256 and v3.whole
    qwen = SHAPES["Qwen/Qwen2-57B-A14B"]  # grouped-query attention: 28 heads, 4 KV heads of 128
    assert qwen.attention_params == 2 * 3584 * 28 * 128 + 2 * 3584 * 4 * 128
    assert (qwen.shared_intermediate, qwen.dense_layers) == (20480, 0)
    assert shape_of("Qwen/Qwen3-235B-A22B-FP8 (a note)") is SHAPES["Qwen/Qwen3-235B-A22B"]
    assert shape_of("/data/models/DeepSeek-V3") is SHAPES["deepseek-ai/DeepSeek-V3"]


def test_a_config_file_gives_the_same_sizes_and_a_bad_one_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["deepseek-ai/DeepSeek-V2-Lite"]))
    shape = read_model_shape(tmp_path)
    assert shape.attention_params == SHAPES["deepseek-ai/DeepSeek-V2-Lite"].attention_params
    assert shape.dense_layers == 1 and shape.source == str(tmp_path)
    broken = {k: v for k, v in CONFIGS["deepseek-ai/DeepSeek-V2-Lite"].items() if k != "hidden_size"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(MoeplaceError, match=r"broken\.json.*hidden_size"):
        read_model_shape(tmp_path / "broken.json")


def test_a_measured_gemm_curve_is_read_and_interpolated(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "nvlink: {rank: [1, 1], node: [1, 1], expert: [1, 1]}\n"
        "rdma: {rank: [1, 1], node: [1, 1], expert: [1, 1]}\n"
        "tflops: 100\nhbm_tbps: 1\nefficiency: 1\nlayer_overhead_us: 5\ngemm: [[1024, 80], [16, 10]]\n"
        "sources: {tflops: measured}\n"
    )
    profile = load_profile(str(tmp_path / "p.yaml"))
    assert profile.gemm == ((16.0, 10.0), (1024.0, 80.0)) and profile.layer_overhead_us == 5.0
    np.testing.assert_allclose(profile.throughput([16, 128, 1024, 4096]), [10, 45, 80, 80])
    (tmp_path / "bad.yaml").write_text(
        (tmp_path / "p.yaml").read_text().replace("efficiency: 1", "efficiency: 2")
    )
    with pytest.raises(MoeplaceError, match=r"bad\.yaml.*efficiency"):
        load_profile(str(tmp_path / "bad.yaml"))


def test_context_is_each_tokens_place_in_its_request_and_prefill_logits_are_its_last():
    context, logits, reads = attention_context(np.array([0, 3, 4]), 8.0, Workload("prefill"))
    assert context == pytest.approx((1 + 2 + 3 + 1) / 4) and logits == pytest.approx(8 * 2 / 4) and reads == 1
    assert attention_context(np.array([0, 3, 4]), 8.0, Workload("decode")) == (context, 8.0, context)


def test_the_rest_of_a_step_is_the_same_for_every_placement_and_dilutes_what_it_buys():
    rng = np.random.default_rng(3)  # 16 experts, the hot ones 16 times as popular as the cold ones
    keys = np.log(np.geomspace(16, 1, 16)) + rng.gumbel(size=(8000, 3, 16))
    trace = make_trace(np.argsort(-keys, axis=2)[:, :, :4], [400] * 20, 16)
    topology = Topology(16, 4)
    workload = Workload("prefill", tokens_per_rank=500)
    shape = SHAPES["deepseek-ai/DeepSeek-V2-Lite"]
    even = np.tile(np.arange(16).reshape(4, 4).T.ravel(), (3, 1))  # rank r: experts r, r + 4, ...
    skewed = np.tile(np.arange(16), (3, 1))  # the four hottest together on rank 0
    profile = PROFILES["h100"]
    times = [
        step_time(step_cost(p, trace, topology, workload), shape, profile, "rank") for p in (even, skewed)
    ]
    assert times[0].rest == times[1].rest > 0
    for t in times:
        assert t.total(True) == pytest.approx(t.moe(True) + t.rest)
    moe_change = times[1].moe(True) / times[0].moe(True) - 1
    whole_change = times[1].total(True) / times[0].total(True) - 1
    assert abs(whole_change) < abs(moe_change) and np.sign(whole_change) == np.sign(moe_change)
    # without the model's other sizes, only the per-layer overhead is added
    moe_only = step_time(step_cost(even, trace, topology, workload), ModelShape(2048, 1408), profile, "rank")
    assert moe_only.rest == pytest.approx(3 * profile.layer_overhead_us * 1e-6)


def test_attention_grows_with_context_and_the_head_with_logits():
    figures = {f: np.ones(2) for f in FIGURES}
    shape, profile = SHAPES["Qwen/Qwen2-57B-A14B"], PROFILES["h100"]

    def rest(**kw):
        return step_time(StepCost(figures, figures, 1, 1024.0, **kw), shape, profile, "rank").rest

    assert rest(context=4096.0) > rest(context=128.0) > rest()
    assert rest(context=4096.0, kv_reads=4096.0) > rest(context=4096.0)  # decode reads its whole context
    assert rest(logits=1024.0) > rest()


def test_a_trace_replay_counts_context_from_its_requests():
    trace = make_trace(np.zeros((6, 1, 1), np.int64), [2, 4], 2)
    cost = step_cost(np.array([[0, 1]]), trace, Topology(2, 2), Workload("prefill", tokens_per_rank=3))
    assert cost.context == pytest.approx((1 + 2 + 1 + 2 + 3 + 4) / 6)


def test_a_profile_file_replaces_the_built_in_figures(tmp_path):
    from moeplace.validators.profile import H800, ModelShape, load_profile, step_time
    from moeplace.validators.step import StepCost

    (tmp_path / "slow.yaml").write_text(
        "nvlink: {rank: [1.0, 1.0], node: [1.0, 1.0], expert: [1.0, 1.0]}\n"
        "rdma: {rank: [1.0, 1.0], node: [1.0, 1.0], expert: [1.0, 1.0]}\n"
        "tflops: 1.0\nhbm_tbps: 1.0\nefficiency: 1.0\nsource: a test\n"
    )
    slow = load_profile(str(tmp_path / "slow.yaml"))
    figures = ("sent_nvlink", "sent_rdma", "received_nvlink", "received_rdma", "pairs", "experts")
    cost = StepCost({f: np.array([1.0]) for f in figures}, {f: np.array([1.0]) for f in figures}, 1, 1)
    shape = ModelShape(hidden=128, intermediate=64)
    time = step_time(cost, shape, slow, "rank")
    # one token each way at 1 GB/s: (128 * (1 + 4/128)) bytes over NVLink and over RDMA
    assert time.dispatch == pytest.approx(2 * 132 / 1e9)
    assert time.compute == pytest.approx(max(6 * 128 * 64 / 1e12, 3 * 128 * 64 / 1e12))
    assert time.total(overlap=True) == max(time.dispatch + time.combine, time.compute)
    assert time.total(overlap=False) == time.dispatch + time.combine + time.compute
    assert step_time(cost, shape, H800, "rank").dispatch < time.dispatch
    # two layers, one waiting on its links and one on its GEMMs: overlap hides each layer's lesser part
    two = {f: np.array([1000.0, 1.0]) if f.startswith(("sent", "received")) else np.array([1.0, 1e6])
           for f in figures}  # fmt: skip
    time = step_time(StepCost(two, two, 1, 1), shape, slow, "rank")
    per_layer = [step_time(StepCost({f: v[[i]] for f, v in two.items()}, two, 1, 1), shape, slow, "rank")
                 for i in (0, 1)]  # fmt: skip
    assert time.total(overlap=True) == pytest.approx(sum(t.total(overlap=True) for t in per_layer))
    assert time.total(overlap=True) > max(time.communication, time.compute)
    (tmp_path / "bad.yaml").write_text("tflops: 1\n")
    with pytest.raises(MoeplaceError, match="not a profile"):
        load_profile(str(tmp_path / "bad.yaml"))

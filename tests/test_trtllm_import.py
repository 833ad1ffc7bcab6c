"""``moeplace import trtllm-stat``: TensorRT-LLM's expert statistics, one workload a directory.

TensorRT-LLM cannot be installed here (its wheel needs a GPU), so the fixtures are written exactly as
its reader, ``load_expert_statistic`` in ``examples/wide_ep/ep_load_balancer/utils.py``, reads them and
as ``tensorrt_llm/_torch/expert_statistic.py`` writes them: ``meta_info.json`` ``{"num_experts": N,
"num_experts_per_token": k}`` (rank 0) and ``rank{r}.safetensors`` per rank, one int64 ``[N]``
``torch.bincount`` of the routed ids a key ``"{iter}_{layer}"``, the layer the model's layer index.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import refused, run
from moeplace.calibrate.stats_io import load_statistics

N, K = 16, 4
CONFIG = {  # DeepSeek-shaped, scaled down: 4 hidden layers, the first dense, so MoE layers 1..3
    "model_type": "deepseek_v3",
    "n_routed_experts": N,
    "num_experts_per_tok": K,
    "first_k_dense_replace": 1,
    "num_hidden_layers": 4,
}
LAYERS = (1, 2, 3)
ITERS = range(100, 104)


def bincount(seed: int, tokens: int = 20, n: int = N) -> np.ndarray:
    """What the writer records for one forward of one layer: ``torch.bincount`` of the top-k ids of
    ``tokens`` tokens (k distinct experts each), int64 ``[n]``."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.choice(n, K, replace=False) for _ in range(tokens)])
    return np.bincount(ids.ravel(), minlength=n).astype(np.int64)


def recording(directory, ranks=2, iters=ITERS, layers=LAYERS, seed=0, meta=None):
    """A TensorRT-LLM statistic directory; returns ``{(rank, iter, layer): counts}``."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"num_experts": N, "num_experts_per_token": K} if meta is None else meta
    (directory / "meta_info.json").write_text(json.dumps(meta))
    counts = {}
    for rank in range(ranks):
        tensors = {}
        for it in iters:
            for layer in layers:
                counts[rank, it, layer] = tensors[f"{it}_{layer}"] = bincount(
                    ((seed * 100 + rank) * 1000 + it) * 100 + layer
                )
        save_file(tensors, str(directory / f"rank{rank}.safetensors"))
    return counts


def expected(counts, iters=ITERS, layers=LAYERS) -> np.ndarray:
    """int64 ``[layers, N]``: the counts of ``iters`` summed over ranks."""
    return np.stack(
        [sum(c for (_, it, la), c in counts.items() if la == layer and it in iters) for layer in layers]
    )


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    return path


def imported(tmp_path, *args):
    result = run("import", "trtllm-stat", *args, "--out", tmp_path / "load.npz")
    assert result.exit_code == 0, result.output
    return load_statistics(tmp_path / "load.npz")


def test_ranks_sum_and_layers_are_the_models_indices(tmp_path, config):
    counts = recording(tmp_path / "chat")
    # raw routed ids ([tokens, k]) beside the counts: TensorRT-LLM's reader skips *_raw.safetensors
    save_file({"100_1": np.zeros((5, K), np.int32)}, str(tmp_path / "chat" / "rank0_raw.safetensors"))
    stats = imported(tmp_path, tmp_path / "chat", "--model-config", config)
    assert stats.workloads == ("chat",)
    assert stats.meta.layer_ids == LAYERS
    assert (stats.meta.num_experts, stats.meta.top_k, stats.meta.num_hidden_layers) == (N, K, 4)
    want = expected(counts)
    np.testing.assert_array_equal(stats.load, want)
    np.testing.assert_array_equal(stats.workload_load[0], want)
    assert want.sum() == 2 * len(ITERS) * len(LAYERS) * 20 * K  # every rank, iteration and layer counted
    assert stats.load_only


def test_iterations_select_a_half_open_range(tmp_path):
    counts = recording(tmp_path / "chat")
    stats = imported(tmp_path, tmp_path / "chat", "--iterations", "101:103")
    np.testing.assert_array_equal(stats.load, expected(counts, iters=range(101, 103)))
    assert "101:103" in stats.meta.source
    # without a model config: layers and top-k from the recording, the layer count unknown
    assert (stats.meta.layer_ids, stats.meta.top_k, stats.meta.num_hidden_layers) == (LAYERS, K, None)
    # a range reaching past the recording keeps what lies inside it
    wide = imported(tmp_path, tmp_path / "chat", "--iterations", "102:9000")
    np.testing.assert_array_equal(wide.load, expected(counts, iters=range(102, 104)))


def test_two_directories_are_two_workloads(tmp_path, config):
    chat = recording(tmp_path / "chat", seed=1)
    code = recording(tmp_path / "code", ranks=3, seed=2)
    stats = imported(tmp_path, tmp_path / "chat", tmp_path / "code", "--model-config", config)
    assert stats.workloads == ("chat", "code")
    np.testing.assert_array_equal(stats.workload_load[0], expected(chat))
    np.testing.assert_array_equal(stats.workload_load[1], expected(code))
    np.testing.assert_array_equal(stats.load, expected(chat) + expected(code))


def test_directories_with_one_label_are_shards_of_one_workload(tmp_path, config):
    first = recording(tmp_path / "node0", seed=1)
    second = recording(tmp_path / "node1", seed=2)
    other = recording(tmp_path / "node2", seed=3)
    stats = imported(
        tmp_path, tmp_path / "node0", tmp_path / "node1", tmp_path / "node2", "--label", "chat,chat,code"
    )
    assert stats.workloads == ("chat", "code")
    np.testing.assert_array_equal(stats.workload_load[0], expected(first) + expected(second))
    np.testing.assert_array_equal(stats.workload_load[1], expected(other))


def test_pipeline_stages_record_disjoint_layers(tmp_path, config):
    """Ranks of different pipeline stages hold different layers: together they cover the model."""
    stage0 = recording(tmp_path / "pp" / "a", ranks=1, layers=(1, 2), seed=1)
    stage1 = recording(tmp_path / "pp" / "b", ranks=1, layers=(3,), seed=2)
    directory = tmp_path / "pp" / "a"
    (tmp_path / "pp" / "b" / "rank0.safetensors").rename(directory / "rank1.safetensors")
    stats = imported(tmp_path, directory, "--model-config", config)
    np.testing.assert_array_equal(
        stats.load, np.concatenate([expected(stage0, layers=(1, 2)), expected(stage1, layers=(3,))])
    )


# --- bad input: one line naming the file, exit 2, nothing written --------------------------------------


def refused_import(tmp_path, culprit, problem, *args):
    out = tmp_path / "load.npz"
    refused(run("import", "trtllm-stat", *args, "--out", out), culprit, problem)
    assert not out.exists()


def test_a_directory_without_meta_info_or_ranks_is_refused(tmp_path):
    recording(tmp_path / "run")
    (tmp_path / "run" / "meta_info.json").unlink()
    refused_import(tmp_path, "meta_info.json", "missing", tmp_path / "run")
    recording(tmp_path / "empty", ranks=0)
    refused_import(tmp_path, "empty", "no rank*.safetensors", tmp_path / "empty")
    refused_import(tmp_path, "meta_info.json", "is not a directory", tmp_path / "empty" / "meta_info.json")
    (tmp_path / "empty" / "meta_info.json").write_text("null")  # rank 0 recorded nothing
    refused_import(tmp_path, "meta_info.json", "JSON object", tmp_path / "empty")


@pytest.mark.parametrize("name", ["layer3", "100-3", "100_3_1", "100_", "0100_3"])
def test_a_tensor_not_named_iter_layer_is_refused(tmp_path, name):
    recording(tmp_path / "run")
    save_file({name: bincount(0)}, str(tmp_path / "run" / "rank1.safetensors"))
    refused_import(tmp_path, "rank1.safetensors", "is not named {iter}_{layer}", tmp_path / "run")


@pytest.mark.parametrize(
    ("value", "dtype", "problem"),
    [
        (-1, np.int64, "finite and >= 0"),
        (np.nan, np.float32, "finite and >= 0"),
        (0.5, np.float64, "whole"),
        (2**63, np.uint64, "reach 2^62"),  # would wrap around in int64
    ],
)
def test_negative_non_finite_fractional_and_huge_counts_are_refused(tmp_path, value, dtype, problem):
    recording(tmp_path / "run")
    tensors = {f"{it}_{layer}": bincount(it + layer).astype(dtype) for it in ITERS for layer in LAYERS}
    tensors["102_2"][5] = value
    save_file(tensors, str(tmp_path / "run" / "rank1.safetensors"))
    refused_import(tmp_path, "rank1.safetensors", problem, tmp_path / "run")


def test_a_dtype_numpy_cannot_read_is_refused(tmp_path):
    """bfloat16 (never written: bincount counts are int64) is refused from the header, not a crash."""
    recording(tmp_path / "run")
    header = json.dumps({"100_1": {"dtype": "BF16", "shape": [N], "data_offsets": [0, 2 * N]}}).encode()
    (tmp_path / "run" / "rank1.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + bytes(2 * N)
    )
    refused_import(tmp_path, "rank1.safetensors", "holds BF16", tmp_path / "run")
    (tmp_path / "run" / "rank1.safetensors").write_bytes(b"\x08\x00\x00")
    refused_import(tmp_path, "rank1.safetensors", "not a readable safetensors file", tmp_path / "run")


def test_ranks_that_disagree_on_layers_or_experts_are_refused(tmp_path):
    recording(tmp_path / "run")
    tensors = {f"{it}_{layer}": bincount(it) for it in ITERS for layer in (1, 2)}  # no layer 3
    save_file(tensors, str(tmp_path / "run" / "rank1.safetensors"))
    refused_import(tmp_path, "rank1.safetensors", "must record the same layers", tmp_path / "run")
    tensors = {f"{it}_{layer}": bincount(it, n=8) for it in ITERS for layer in LAYERS}
    save_file(tensors, str(tmp_path / "run" / "rank1.safetensors"))
    refused_import(tmp_path, "rank1.safetensors", f"meta_info.json says {N} experts", tmp_path / "run")


def test_a_gap_in_the_recording_is_refused(tmp_path):
    recording(tmp_path / "gap", iters=(100, 101, 103))
    refused_import(tmp_path, "gap", "not iteration 102", tmp_path / "gap")
    recording(tmp_path / "hole", ranks=1)
    tensors = {f"{it}_{layer}": bincount(it) for it in ITERS for layer in LAYERS if (it, layer) != (101, 2)}
    save_file(tensors, str(tmp_path / "hole" / "rank0.safetensors"))
    refused_import(tmp_path, "hole", "no rank records layer 2 in iteration 101", tmp_path / "hole")


def test_a_workload_of_other_layers_or_experts_is_refused(tmp_path):
    recording(tmp_path / "chat")
    recording(tmp_path / "short", layers=(1, 2))
    refused_import(
        tmp_path, "short", "every workload must record the same model", tmp_path / "chat", tmp_path / "short"
    )
    small = tmp_path / "small"
    small.mkdir()
    (small / "meta_info.json").write_text(json.dumps({"num_experts": 8, "num_experts_per_token": K}))
    save_file(
        {f"{it}_{la}": bincount(it, n=8) for it in ITERS for la in LAYERS}, str(small / "rank0.safetensors")
    )
    refused_import(tmp_path, "small", "x 8 experts", tmp_path / "chat", small)


def test_an_iteration_range_that_selects_nothing_is_refused(tmp_path):
    recording(tmp_path / "run")
    refused_import(
        tmp_path,
        "run",
        "select nothing: it records iterations 100..103",
        tmp_path / "run",
        "--iterations",
        "0:100",
    )
    for text in ("100", "a:b", "103:101", "5:5", "-1:3", "²:3"):
        refused_import(tmp_path, None, "--iterations", tmp_path / "run", "--iterations", text)


def test_a_recording_that_contradicts_the_model_config_is_refused(tmp_path, config):
    recording(tmp_path / "slots", meta={"num_experts": N, "num_experts_per_token": K})
    refused_import(
        tmp_path,
        "meta_info.json",
        "top-4, the model config top-2",
        tmp_path / "slots",
        "--model-config",
        _config(tmp_path, num_experts_per_tok=2),
    )
    recording(tmp_path / "dense", layers=(0, 1, 2, 3))
    refused_import(
        tmp_path,
        "dense",
        "records layer 0, which is not a MoE layer",
        tmp_path / "dense",
        "--model-config",
        config,
    )
    recording(tmp_path / "partial", layers=(1, 2))
    refused_import(
        tmp_path, "partial", "no counts for MoE layer 3", tmp_path / "partial", "--model-config", config
    )
    refused_import(
        tmp_path,
        "partial",
        "counts 16 experts; the model config says 32",
        tmp_path / "partial",
        "--model-config",
        _config(tmp_path, n_routed_experts=32),
    )


def _config(tmp_path, **changes):
    path = tmp_path / f"config-{len(changes)}-{next(iter(changes))}.json"
    path.write_text(json.dumps(CONFIG | changes))
    return path

"""vLLM routed experts, as vLLM 0.21.0 and 0.33.0 write them, import to exactly the routing served.

vLLM's own code does what it can on a CPU without its compiled package: 0.21's capture buffers,
MoE layer count and prompt/generation split (``routed_experts_capturer.py``), then ``tolist()`` as
its server does; 0.33's ``numpy2base64`` (``utils/serial_utils.py``) on the array its capturer
returns, ``[prompt + generated - 1, num_hidden_layers, k]`` uint8 indexed by model layer with dense
layers' rows zero (read from its capturer; assembling it needs its GPU worker). Routing is real
(the packaged gpt-oss trace's first four layers), in a DeepSeek-style model with a dense first
layer and in an all-MoE one.
"""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harness import vllm_file
from typer.testing import CliRunner

from moeplace.calibrate.trace_io import load_trace
from moeplace.cli import app

pytestmark = pytest.mark.engines

CAPTURER = "vllm/model_executor/layers/fused_moe/routed_experts_capturer.py"
K, N = 4, 32
MODELS = {  # config.json of each, and the model layers that are MoE
    "deepseek": (
        {
            "model_type": "deepseek_v2",
            "num_hidden_layers": 5,
            "first_k_dense_replace": 1,
            "moe_layer_freq": 1,
            "n_routed_experts": N,
            "num_experts_per_tok": K,
        },
        (1, 2, 3, 4),
    ),
    "all-moe": (
        {"model_type": "mixtral", "num_hidden_layers": 4, "num_local_experts": N, "num_experts_per_tok": K},
        (0, 1, 2, 3),
    ),
}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def requests(real_trace):
    """``(prompt tokens, generated tokens, routing [prompt + generated - 1, 4, k])`` per request:
    the model never runs the last generated token."""
    ids = np.asarray(real_trace.topk_ids[:, :4]).astype(np.int64)
    offsets, out = real_trace.doc_offsets, []
    for d in range(5):
        prompt, generated = 5 + d, 3 + (d % 3)
        out.append((prompt, generated, ids[offsets[d] : offsets[d] + prompt + generated - 1]))
    return out


def v021_line(capturer, config: dict, moe_layers, prompt: int, generated: int, routing: np.ndarray) -> dict:
    """A /v1/completions response of vLLM 0.21: its capture buffers (sized by its own MoE layer
    count, indexed by MoE ordinal), filled a step at a time, split and listed as its server does."""
    layers = capturer._count_moe_layers(NS(**config))
    device = capturer._RoutedExpertsDeviceCache(64, layers, K, "cpu")
    host = capturer._RoutedExpertsHostCache(layers, K, 64)
    steps = [range(prompt)] + [[p] for p in range(prompt, prompt + generated - 1)]  # prefill, decodes
    for positions in steps:
        for ordinal in range(len(moe_layers)):  # each MoE layer writes at its ordinal
            rows = torch.tensor(routing[list(positions), ordinal], dtype=torch.int16)
            device.capture_fwd_routed_experts(ordinal, rows)
        buffer = host.get_or_grow_buffer("request", max(positions))
        buffer[list(positions)] = device.buffer[:, : len(positions)].numpy().transpose(1, 0, 2)
        host.update_filled_len("request", max(positions))
    full = host.get_buffer("request")[: host.get_filled_len("request")]
    prompt_part, generated_part = capturer.split_routed_experts(full, prompt, generated)
    return {
        "object": "text_completion",
        "prompt_routed_experts": prompt_part.tolist(),
        "choices": [
            {
                "index": 0,
                "text": "...",
                "routed_experts": None if generated_part is None else generated_part.tolist(),
            }
        ],
    }


def v033_line(serial_utils, config: dict, moe_layers, routing: np.ndarray) -> dict:
    """A /v1/completions response of vLLM 0.33: ``numpy2base64`` of the model-layer array."""
    array = np.zeros((routing.shape[0], config["num_hidden_layers"], K), np.uint8)
    array[:, list(moe_layers)] = routing
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": "...", "routed_experts": serial_utils.numpy2base64(array)}],
    }


def write_outputs(version, model, requests, tmp_path, prefix_cached=0):
    config, moe_layers = MODELS[model]
    lines = []
    for prompt, generated, routing in requests:
        if version == "0.21.0":
            line = v021_line(vllm_file(version, CAPTURER), config, moe_layers, prompt, generated, routing)
            if prefix_cached:  # vLLM 0.21 leaves the rows of prefix-cache hits zero
                line["prompt_routed_experts"][:prefix_cached] = [
                    [[0] * K] * len(row) for row in line["prompt_routed_experts"][:prefix_cached]
                ]
        else:
            line = v033_line(vllm_file(version, "vllm/utils/serial_utils.py"), config, moe_layers, routing)
        lines.append(json.dumps(line))
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "out.jsonl").write_text("\n".join(lines) + "\n")
    return moe_layers


@pytest.mark.parametrize("version", ["0.21.0", "0.33.0"])
@pytest.mark.parametrize("model", list(MODELS))
def test_routed_experts_import_to_the_served_routing(version, model, requests, tmp_path):
    moe_layers = write_outputs(version, model, requests, tmp_path)
    result = run(
        "import", "vllm", tmp_path / "out.jsonl", "--model-config", tmp_path / "config.json",
        "--out", tmp_path / "t.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    trace = load_trace(tmp_path / "t.npz")
    assert trace.meta.layer_ids == moe_layers and trace.meta.num_experts == N and trace.meta.top_k == K
    assert trace.meta.num_hidden_layers == MODELS[model][0]["num_hidden_layers"]
    np.testing.assert_array_equal(np.diff(trace.doc_offsets), [r.shape[0] for _, _, r in requests])
    np.testing.assert_array_equal(np.asarray(trace.topk_ids), np.concatenate([r for _, _, r in requests]))


@pytest.mark.parametrize("version", ["0.21.0", "0.33.0"])
def test_an_all_moe_model_needs_no_config_but_dense_layers_do(version, requests, tmp_path):
    write_outputs(version, "all-moe", requests, tmp_path)
    out = tmp_path / "t.npz"
    assert run("import", "vllm", tmp_path / "out.jsonl", "--num-experts", N, "--out", out).exit_code == 0
    write_outputs(version, "deepseek", requests, tmp_path)
    result = run("import", "vllm", tmp_path / "out.jsonl", "--num-experts", N, "--out", tmp_path / "d.npz")
    assert result.exit_code == 2 and "--model-config" in result.stderr, result.output
    assert not (tmp_path / "d.npz").exists()


def test_v021_prefix_cache_hits_are_refused_not_imported_as_expert_0(requests, tmp_path):
    write_outputs("0.21.0", "deepseek", requests, tmp_path, prefix_cached=3)
    result = run(
        "import", "vllm", tmp_path / "out.jsonl", "--model-config", tmp_path / "config.json",
        "--out", tmp_path / "t.npz",
    )  # fmt: skip
    assert result.exit_code == 2 and "prefix caching off" in result.stderr, result.output

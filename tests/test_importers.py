"""Importers, each on fixtures written to the engine's documented format."""

import base64
import io
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner

from conftest import random_trace
from moeplace.calibrate.model_config import moe_layout
from moeplace.calibrate.stats_io import load_statistics
from moeplace.calibrate.trace_io import load_trace, save_trace
from moeplace.cli import app

runner = CliRunner()
N, LAYERS, DENSE = 8, 4, 0  # layer 0 of the model is dense: SGLang gives it an all -1 row


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def logical_routing(rng, tokens):
    """True routing: top-2 distinct logical experts per token at MoE layers 1..3, [T, 3, 2]."""
    return np.argsort(rng.random((tokens, LAYERS - 1, N)), axis=-1)[..., :2]


@pytest.fixture
def sglang_dumps(tmp_path):
    rng = np.random.default_rng(0)
    physical_to_logical = np.stack(
        [np.concatenate([rng.permutation(N), [0, 3]]) for _ in range(LAYERS)]
    )  # 2 replicas
    extend, decode = logical_routing(rng, 8), logical_routing(rng, 4)

    def to_physical(logical):  # [T, 3, 2] logical -> [4 layers, T, 8] physical slots, -1 elsewhere
        out = np.full((LAYERS, logical.shape[0], 8), -1)
        for t, layer, slot in np.ndindex(*logical.shape):
            slots = np.flatnonzero(physical_to_logical[layer + 1] == logical[t, layer, slot])
            out[layer + 1, t, slot] = rng.choice(slots)  # any replica holding that expert
        return torch.tensor(out, dtype=torch.int32)

    records = [
        {
            "forward_pass_id": 7,
            "rank": 0,
            "input_ids": list(range(8)),
            "positions": list(range(8)),
            "extend_seq_lens": [3, 5],
            "forward_mode": 1,
            "topk_ids_of_layer": to_physical(extend),
            "misc_objects": [],
        },
        {
            "forward_pass_id": 8,
            "rank": 0,
            "input_ids": [11, 12, 13, 14],
            "positions": [3, 5, 1, 2],
            "extend_seq_lens": None,
            "forward_mode": 2,
            "topk_ids_of_layer": to_physical(decode),
            "misc_objects": [],
        },
    ]
    paths = []
    for rank in (0, 1):  # tensor parallelism: both ranks record the same tokens
        path = tmp_path / f"expert_distribution_recorder_1.0_{rank}.pt"
        torch.save(
            {"records": records, "last_physical_to_logical_map": torch.tensor(physical_to_logical)}, path
        )
        paths.append(path)
    return paths, np.concatenate([extend, decode])


def test_sglang_per_token_dumps_map_back_to_logical_experts(tmp_path, sglang_dumps):
    paths, expected = sglang_dumps
    result = run("import", "sglang", *paths, "--out", tmp_path / "t.trace", "--model", "org/tiny")
    assert result.exit_code == 0, result.output
    trace = load_trace(tmp_path / "t.trace")
    assert trace.meta.layer_ids == (1, 2, 3) and trace.meta.top_k == 2 and trace.meta.num_experts == N
    assert trace.meta.model == "org/tiny" and trace.meta.phase == "mixed"
    np.testing.assert_array_equal(np.diff(trace.doc_offsets), [3, 5, 4])  # two requests, one decode pass
    np.testing.assert_array_equal(trace.topk_ids, expected)  # duplicate rank dropped, ids logical


def test_sglang_inconsistent_map_is_refused(tmp_path, sglang_dumps):
    paths, _ = sglang_dumps
    dump = torch.load(paths[0], weights_only=True)
    dump["last_physical_to_logical_map"][:] = 0  # every slot claims expert 0
    torch.save(dump, tmp_path / "bad.pt")
    result = run("import", "sglang", tmp_path / "bad.pt", "--out", tmp_path / "t.trace")
    assert result.exit_code == 2 and "bad.pt: tokens select 2 experts each" in result.stderr
    assert not (tmp_path / "t.trace").exists()


def test_sglang_stat_dump_is_load_only(tmp_path):
    counts = np.random.default_rng(1).integers(0, 50, (3, LAYERS, N))
    counts[:, DENSE] = 0
    torch.save(
        {"rank": 0, "logical_count": torch.tensor(counts), "average_utilization_rate_over_window": None},
        tmp_path / "stat.pt",
    )
    assert (
        run("import", "sglang-stat", tmp_path / "stat.pt", "--out", tmp_path / "s.npz").exit_code == 2
    )  # no top-k
    result = run("import", "sglang-stat", tmp_path / "stat.pt", "--top-k", 2, "--out", tmp_path / "s.npz")
    assert result.exit_code == 0, result.output
    stats = load_statistics(tmp_path / "s.npz")
    assert stats.load_only and stats.meta.layer_ids == (1, 2, 3)
    np.testing.assert_array_equal(stats.load, counts.sum(axis=0)[1:])

    ok = run(
        "plan", tmp_path / "s.npz", "--devices", 2, "--solver", "frequency", "--out", tmp_path / "p.yaml"
    )
    assert ok.exit_code == 0, ok.output
    refused = run(
        "plan", tmp_path / "s.npz", "--devices", 2, "--solver", "greedy-capped", "--out", tmp_path / "q.yaml"
    )
    assert (
        refused.exit_code == 2 and "needs co-activation" in refused.stderr and "load only" in refused.stderr
    )
    assert not (tmp_path / "q.yaml").exists()


def npy_base64(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()


def test_vllm_routed_experts_jsonl(tmp_path):
    rng = np.random.default_rng(2)
    a, prompt, generated, c0, c1 = (logical_routing(rng, n) for n in (5, 4, 2, 3, 2))
    lines = [
        {"routed_experts": a.tolist(), "domain": "math"},  # offline CompletionOutput, written out
        {
            "model": "org/served",
            "prompt_routed_experts": npy_base64(prompt),  # server, split prompt routing
            "choices": [{"routed_experts": npy_base64(generated)}],
        },
        {"choices": [{"routed_experts": c0.tolist()}, {"routed_experts": c1.tolist()}]},  # two samples
    ]
    (tmp_path / "out.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    missing = run("import", "vllm", tmp_path / "out.jsonl", "--out", tmp_path / "t.npz")
    assert missing.exit_code == 2 and "--num-experts" in missing.stderr
    result = run(
        "import",
        "vllm",
        tmp_path / "out.jsonl",
        "--num-experts",
        N,
        "--layer-ids",
        "1-3",
        "--out",
        tmp_path / "t.npz",
    )
    assert result.exit_code == 0, result.output
    trace = load_trace(tmp_path / "t.npz")
    assert trace.meta.layer_ids == (1, 2, 3) and trace.meta.model == "org/served"
    assert list(trace.doc_labels) == ["math", "out", "out", "out/choice1"]
    np.testing.assert_array_equal(trace.topk_ids, np.concatenate([a, prompt, generated, c0, c1]))


def test_vllm_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"routed_experts": [[[0, 1]]]}\n{not json\n')
    result = run("import", "vllm", tmp_path / "bad.jsonl", "--num-experts", 4, "--out", tmp_path / "t.npz")
    assert result.exit_code == 2 and "bad.jsonl" in result.stderr and "line 2" in result.stderr


def test_npz_import_concatenates_interchange_files(tmp_path):
    first, second = random_trace(seed=1, docs=3), random_trace(seed=2, docs=4)
    save_trace(first, tmp_path / "a.npz")
    save_trace(second, tmp_path / "b.npz")
    result = run("import", "npz", tmp_path / "a.npz", tmp_path / "b.npz", "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    trace = load_trace(tmp_path / "t")
    assert trace.num_documents == 7
    np.testing.assert_array_equal(trace.topk_ids, np.concatenate([first.topk_ids, second.topk_ids]))


def test_pickled_pt_file_is_refused(tmp_path):
    torch.save({"records": [], "payload": Exploit()}, tmp_path / "evil.pt")
    result = run("import", "sglang", tmp_path / "evil.pt", "--out", tmp_path / "t")
    assert result.exit_code == 2 and "not a safe torch file" in result.stderr
    assert not Exploit.ran


class Exploit:
    ran = False

    def __reduce__(self):
        return (Exploit._run, ())

    @staticmethod
    def _run():
        Exploit.ran = True
        return Exploit


@pytest.mark.parametrize(
    ("config", "layers", "experts", "top_k"),
    [
        (  # DeepSeek-V2-Lite: layer 0 dense
            {"num_hidden_layers": 27, "first_k_dense_replace": 1, "n_routed_experts": 64,
             "num_experts_per_tok": 6},
            tuple(range(1, 27)), 64, 6,
        ),
        (  # Qwen2-MoE with a dense layer and every other layer sparse
            {"num_hidden_layers": 6, "decoder_sparse_step": 2, "mlp_only_layers": [3], "num_experts": 16,
             "num_experts_per_tok": 2},
            (1, 5), 16, 2,
        ),
        ({"num_hidden_layers": 24, "num_local_experts": 32, "num_experts_per_tok": 4},
         tuple(range(24)), 32, 4),
        ({"text_config": {"num_hidden_layers": 2, "num_experts": 8, "num_experts_per_tok": 2}}, (0, 1), 8, 2),
    ],
)  # fmt: skip
def test_moe_layout_from_a_model_config(config, layers, experts, top_k):
    layout = moe_layout(config)
    assert (layout.layer_ids, layout.num_experts, layout.top_k) == (layers, experts, top_k)


def test_a_model_config_without_experts_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 4, "num_experts_per_tok": 2}))
    (tmp_path / "o.jsonl").write_text('{"routed_experts": [[[1, 2]]]}\n')
    result = run(
        "import", "vllm", tmp_path / "o.jsonl", "--model-config", tmp_path, "--out", tmp_path / "t.npz"
    )
    assert result.exit_code == 2 and "config.json: config names no routed experts" in result.stderr

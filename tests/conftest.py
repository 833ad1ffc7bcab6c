"""Shared fixtures: the real packaged trace for quality, tiny hand-made traces for exact checks."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from moeplace.calibrate.split import split_documents
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.trace import Trace, TraceMeta
from moeplace.calibrate.trace_io import load_trace, save_trace
from moeplace.demo import demo_trace_path

# tiny Hugging Face MoE models, built in-process from configs (tests that use them need transformers)
TINY_MOE = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
TINY_MLA = TINY_MOE | dict(
    num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=8, v_head_dim=8, qk_nope_head_dim=8
)
TINY_MOE_FAMILIES = {
    "olmoe": lambda: _transformers().OlmoeConfig(**TINY_MOE, num_experts=8, num_experts_per_tok=2),
    "mixtral": lambda: _transformers().MixtralConfig(**TINY_MOE, num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": lambda: _transformers().Qwen2MoeConfig(
        **TINY_MOE,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        mlp_only_layers=[1],
    ),
    "qwen3_moe": lambda: _transformers().Qwen3MoeConfig(
        **TINY_MOE, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8
    ),
    "deepseek_v2": lambda: _transformers().DeepseekV2Config(
        **TINY_MLA,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        n_shared_experts=1,
        first_k_dense_replace=1,
        n_group=4,
        topk_group=2,
        topk_method="group_limited_greedy",
        q_lora_rank=None,
    ),
    "deepseek_v3": lambda: _transformers().DeepseekV3Config(
        **TINY_MLA,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        n_shared_experts=1,
        first_k_dense_replace=1,
        n_group=4,
        topk_group=2,
        q_lora_rank=16,
    ),
    "gpt_oss": lambda: _transformers().GptOssConfig(
        **TINY_MOE,
        num_local_experts=8,
        num_experts_per_tok=2,
        head_dim=8,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
}


def _transformers():
    import transformers

    return transformers


def make_trace(topk_ids, doc_lengths, num_experts, layer_ids=None, labels=None) -> Trace:
    """A trace from ids ``[T, L, k]`` (or ``[T, k]`` for one layer) and document lengths."""
    ids = np.asarray(topk_ids, dtype=np.int16)
    if ids.ndim == 2:
        ids = ids[:, None, :]
    offsets = np.concatenate([[0], np.cumsum(doc_lengths)]).astype(np.int64)
    layers = tuple(layer_ids) if layer_ids is not None else tuple(range(ids.shape[1]))
    meta = TraceMeta(model="test/tiny", num_experts=num_experts, top_k=ids.shape[2], layer_ids=layers)
    doc_labels = np.array(labels if labels is not None else [f"doc{i}" for i in range(len(doc_lengths))])
    return Trace(ids, offsets, doc_labels, meta)


def random_trace(seed=0, tokens=400, docs=8, layers=2, experts=16, top_k=4) -> Trace:
    """Random routing with distinct experts per token (no structure: for exactness checks only)."""
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((tokens, layers, experts)), axis=-1)[..., :top_k]
    lengths = np.diff(np.linspace(0, tokens, docs + 1).astype(int))
    return make_trace(ids, lengths, experts)


def run(*args):
    """The CLI on ``args`` (any objects, made strings), in this process."""
    from typer.testing import CliRunner

    from moeplace.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def refused(result, path=None, problem: str | None = None) -> str:
    """Assert the bad-input contract (exit 2, one ``error:`` line naming ``path`` and ``problem``,
    no traceback); return the error line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    if path is not None:
        assert str(path).split("/")[-1] in lines[0], lines[0]
    if problem is not None:
        assert problem in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A folder with ``trace.npz`` (GOOD), its ``p.yaml`` (frequency, D = 4) and ``perm.json``."""
    d = tmp_path_factory.mktemp("good")
    save_trace(GOOD, d / "trace.npz")
    planned = run("plan", d / "trace.npz", "--devices", 4, "--solver", "frequency", "--out", d / "p.yaml")
    assert planned.exit_code == 0, planned.output
    perm = run("export", d / "p.yaml", "--format", "permutation", "--out", d / "perm.json")
    assert perm.exit_code == 0, perm.output
    return d


def read_sglang_map(path) -> np.ndarray:
    """int64 ``[layers, P]``: the map in an SGLang ``--init-expert-location`` file (.json or .pt).
    What SGLang itself makes of it is tested in ``tests/engines`` with SGLang's own code."""
    import json
    from pathlib import Path

    if str(path).endswith(".pt"):
        import torch

        doc = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    else:
        doc = json.loads(Path(path).read_text())
    assert set(doc) == {"physical_to_logical_map"}  # SGLang passes every key to init_by_mapping
    return np.asarray(doc["physical_to_logical_map"], dtype=np.int64)


GOOD = random_trace(seed=0, tokens=400, docs=8, layers=2, experts=16, top_k=4)


@pytest.fixture(scope="session")
def real_trace() -> Trace:
    """The packaged gpt-oss-20b routing subset (real traffic)."""
    return load_trace(demo_trace_path())


@pytest.fixture(scope="session")
def real_split(real_trace):
    return split_documents(real_trace, holdout_share=0.5, seed=0)


@pytest.fixture(scope="session")
def real_stats(real_split):
    return compute_statistics(real_split[0])


def first_layers(stats, count):
    """``stats`` cut to its first ``count`` MoE layers (keeps slow solvers' tests short)."""
    meta = dataclasses.replace(stats.meta, layer_ids=stats.meta.layer_ids[:count])
    return dataclasses.replace(
        stats,
        meta=meta,
        load=stats.load[:count],
        coact=stats.coact[:count],
        load_resamples=stats.load_resamples[:count],
        topk_sets=stats.topk_sets[:count],
    )


def all_balanced_placements(n, d):
    """Every equal-count placement up to device relabelling (expert 0 on device 0, ...)."""
    slots = n // d

    def extend(remaining, device):
        if not remaining:
            yield []
            return
        first, rest = remaining[0], remaining[1:]
        for others in itertools.combinations(rest, slots - 1):
            group = (first, *others)
            left = [e for e in rest if e not in others]
            for tail in extend(left, device + 1):
                yield [(group, device), *tail]

    for groups in extend(list(range(n)), 0):
        placement = np.empty(n, np.int64)
        for group, device in groups:
            placement[list(group)] = device
        yield placement

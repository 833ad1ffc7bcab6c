"""Which layers of a Hugging Face MoE model route to experts, read from its ``config.json``.

Engines that record routing by layer (vLLM's routed experts) do not say which layers are dense;
the model's config does: DeepSeek-V2/V3 and Kimi (``first_k_dense_replace``, ``moe_layer_freq``),
Qwen2/3-MoE (``decoder_sparse_step``, ``mlp_only_layers``), and all-MoE models (Mixtral, GPT-OSS,
OLMoE). The rules are the ones those models' modeling code applies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from moeplace.calibrate.safe_io import loads_json, read_text
from moeplace.calibrate.trace import MAX_EXPERTS, MAX_LAYERS
from moeplace.errors import MoeplaceError, file_error

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")  # what a model's weights may be loaded as

MAX_CONFIG_BYTES = 1 << 24  # a config.json is kilobytes


@dataclasses.dataclass(frozen=True)
class MoeLayout:
    """``layer_ids``: the model's index of each MoE layer, ascending; ``num_hidden_layers``: all
    layers, dense ones included."""

    num_hidden_layers: int
    layer_ids: tuple[int, ...]
    num_experts: int
    top_k: int
    group_limit: tuple[int, int] | None = None  # (G, K) of group-limited routing (``group_limit``)


def moe_layout(config: dict) -> MoeLayout:
    """The MoE layout a model config describes (``text_config`` of multimodal configs first)."""
    config = config.get("text_config") or config
    if not isinstance(config, dict):
        raise MoeplaceError("text_config is not a JSON object")
    layers = _count(config, "num_hidden_layers", 1, MAX_LAYERS)
    name = next(
        (key for key in ("n_routed_experts", "num_local_experts", "num_experts") if config.get(key)), None
    )
    if name is None:
        raise MoeplaceError(
            "config names no routed experts (n_routed_experts, num_local_experts or num_experts)"
        )
    experts = _count(config, name, 1, MAX_EXPERTS)
    top_k = _count(
        config, "num_experts_per_tok" if "num_experts_per_tok" in config else "experts_per_token", 1, experts
    )
    if "first_k_dense_replace" in config or "n_routed_experts" in config:  # DeepSeek-V2/V3, Kimi
        first = _count(config, "first_k_dense_replace", 0, layers, default=0)
        every = _count(config, "moe_layer_freq", 1, layers, default=1)
        moe = [i for i in range(layers) if i >= first and i % every == 0]
    elif "decoder_sparse_step" in config or "mlp_only_layers" in config:  # Qwen2-MoE, Qwen3-MoE
        step = _count(config, "decoder_sparse_step", 1, layers, default=1)
        dense = config.get("mlp_only_layers") or []
        if not isinstance(dense, list) or not all(type(i) is int and 0 <= i < layers for i in dense):
            raise MoeplaceError(f"config field 'mlp_only_layers' must list layer indices in 0..{layers - 1}")
        moe = [i for i in range(layers) if i not in set(dense) and (i + 1) % step == 0]
    else:  # Mixtral, GPT-OSS, OLMoE: every layer
        moe = list(range(layers))
    if not moe:
        raise MoeplaceError("config describes no MoE layer")
    return MoeLayout(layers, tuple(moe), experts, top_k, group_limit(config))


def group_limit(config: dict) -> tuple[int, int] | None:
    """(G, K) when the config routes group-limited (``n_group`` groups, a token's experts from its
    top ``topk_group``), else None. DeepSeek-V3 (and its look-alikes) always route group-limited;
    DeepSeek-V2 unless ``topk_method`` is ``"greedy"``; choosing ``topk_group >= n_group`` groups is
    no limit."""
    config = config.get("text_config") or config
    n_group, topk_group = config.get("n_group") or 1, config.get("topk_group") or config.get("n_group") or 1
    if type(n_group) is not int or type(topk_group) is not int:
        raise MoeplaceError(f"n_group and topk_group must be integers, got {n_group!r} and {topk_group!r}")
    greedy = config.get("topk_method") == "greedy" and config.get("model_type") != "deepseek_v3"
    return None if n_group <= 1 or greedy or topk_group >= n_group else (n_group, topk_group)


def read_model_config(path: Path) -> MoeLayout:
    """``moe_layout`` of a ``config.json`` file (or of the one in a model directory)."""
    return read_config(path, moe_layout)


def read_config(path: Path, read):
    """``read(config)`` of the JSON object in a ``config.json`` file (or of the one in a model
    directory); its errors (``MoeplaceError``) name the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    text = read_text(path, MAX_CONFIG_BYTES)
    try:
        config = loads_json(text, "the model config")
        if not isinstance(config, dict):
            raise MoeplaceError("the model config is not a JSON object")
        return read(config)
    except MoeplaceError as exc:
        raise file_error(path, exc) from None


def _count(config: dict, key: str, low: int, high: int, default: int | None = None) -> int:
    """Integer field ``key`` within [low, high] (``default`` when absent or null)."""
    value = config.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MoeplaceError(f"config field {key!r} must be an integer in {low}..{high}, got {value!r}")
    return value

"""Which layers of a Hugging Face MoE model route to experts, read from its ``config.json``.

Engines that record routing by layer (vLLM's routed experts) do not say which layers are dense;
the model's config does: DeepSeek-V2/V3 and Kimi (``first_k_dense_replace``, ``moe_layer_freq``),
Qwen2/3-MoE (``decoder_sparse_step``, ``mlp_only_layers``), and all-MoE models (Mixtral, GPT-OSS,
OLMoE). The rules are the ones those models' modeling code applies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from moeplace.calibrate.safe_io import loads_json
from moeplace.errors import MoeplaceError, file_error

MAX_CONFIG_BYTES = 1 << 24  # a config.json is kilobytes


@dataclasses.dataclass(frozen=True)
class MoeLayout:
    """``layer_ids``: the model's index of each MoE layer, ascending; ``num_hidden_layers``: all
    layers, dense ones included."""

    num_hidden_layers: int
    layer_ids: tuple[int, ...]
    num_experts: int
    top_k: int


def moe_layout(config: dict) -> MoeLayout:
    """The MoE layout a model config describes (``text_config`` of multimodal configs first)."""
    config = config.get("text_config") or config
    layers = _positive(config, "num_hidden_layers")
    names = ("n_routed_experts", "num_local_experts", "num_experts")
    experts = next((config[key] for key in names if config.get(key)), None)
    if not isinstance(experts, int) or experts < 1:
        raise MoeplaceError(f"config names no routed experts ({', '.join(names)})")
    top_k = _positive(
        config, next((k for k in ("num_experts_per_tok", "experts_per_token") if k in config), "")
    )
    if "first_k_dense_replace" in config or "n_routed_experts" in config:  # DeepSeek-V2/V3, Kimi
        first, every = int(config.get("first_k_dense_replace") or 0), int(config.get("moe_layer_freq") or 1)
        moe = [i for i in range(layers) if i >= first and i % every == 0]
    elif "decoder_sparse_step" in config or "mlp_only_layers" in config:  # Qwen2-MoE, Qwen3-MoE
        step, dense = int(config.get("decoder_sparse_step") or 1), set(config.get("mlp_only_layers") or ())
        moe = [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
    else:  # Mixtral, GPT-OSS, OLMoE: every layer
        moe = list(range(layers))
    if not moe:
        raise MoeplaceError("config describes no MoE layer")
    return MoeLayout(layers, tuple(moe), experts, top_k)


def read_model_config(path: Path) -> MoeLayout:
    """``moe_layout`` of a ``config.json`` file (or of the one in a model directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise file_error(path, "no such file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise file_error(path, f"{path.stat().st_size} bytes is not a model config")
    try:
        config = loads_json(path.read_text(encoding="utf-8"), "the model config")
        if not isinstance(config, dict):
            raise MoeplaceError("the model config is not a JSON object")
        return moe_layout(config)
    except (OSError, UnicodeDecodeError) as exc:
        raise file_error(path, f"unreadable ({exc})") from None
    except MoeplaceError as exc:
        raise file_error(path, str(exc)) from None


def _positive(config: dict, key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MoeplaceError(f"config field {key!r} missing or not a positive integer")
    return value

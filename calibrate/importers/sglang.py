"""SGLang's expert distribution recorder dumps (``--expert-distribution-recorder-mode``).

``per_token`` (one ``.pt`` per rank): ``{"records": [{"forward_pass_id", "rank", "input_ids",
"extend_seq_lens", "topk_ids_of_layer": int32 [num_layers, tokens, 8], ...}],
"last_physical_to_logical_map": [num_layers, num_physical]}``. Ids are physical expert slots
(-1 unused), mapped back to logical experts through the map; rows of layers without experts
(dense layers) and slot columns never used are dropped. An extend (prefill) record is split into
one document per request with ``extend_seq_lens``; the dump has no request ids, so a decode
record becomes one document per forward pass. Under tensor parallelism every rank records the same
tokens: a record whose forward pass and input ids another rank already gave is skipped.

``stat`` (one ``.pt``): ``{"logical_count": [steps, num_layers, N], ...}``: expert load only,
imported as load-only statistics.
Source: sgl-project/sglang ``python/sglang/srt/eplb/expert_distribution.py``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moeplace.calibrate.importers.torch_files import load_pt
from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.trace import TraceMeta
from moeplace.errors import MoeplaceError, file_error


def read_per_token(paths: Sequence[Path], options) -> tuple[TraceMeta, list[tuple[np.ndarray, str]]]:
    documents, seen, decode = [], set(), False
    map_shape = None
    for path in paths:
        dump = load_pt(path)
        if not isinstance(dump, dict) or "records" not in dump or "last_physical_to_logical_map" not in dump:
            raise file_error(
                path, "not an SGLang per_token dump (needs 'records' and 'last_physical_to_logical_map')"
            )
        to_logical = _as_array(dump["last_physical_to_logical_map"], path, "last_physical_to_logical_map")
        if to_logical.ndim != 2 or to_logical.min(initial=0) < 0:
            raise file_error(
                path, "last_physical_to_logical_map must be [layers, physical slots] of ids >= 0"
            )
        _check_every_expert_placed(to_logical, options.num_experts, path)
        map_shape = map_shape or to_logical.shape
        if to_logical.shape != map_shape:
            raise file_error(
                path,
                f"physical->logical map of shape {to_logical.shape}; another file has {map_shape}",
            )
        for index, record in enumerate(dump["records"]):
            where = f"record {index}"
            topk = _as_array(record.get("topk_ids_of_layer"), path, f"{where}: topk_ids_of_layer")
            input_ids = np.asarray(record.get("input_ids", []), dtype=np.int64)
            if topk.ndim != 3 or topk.shape[0] != to_logical.shape[0] or topk.shape[1] != input_ids.shape[0]:
                raise file_error(
                    path,
                    f"{where}: topk_ids_of_layer {topk.shape} does not match "
                    f"{to_logical.shape[0]} layers x {input_ids.shape[0]} tokens",
                )
            key = (record.get("forward_pass_id"), hashlib.sha1(input_ids.tobytes()).hexdigest())
            if key in seen:  # the same tokens from another tensor-parallel rank
                continue
            seen.add(key)
            if topk.max(initial=-1) >= to_logical.shape[1] or topk.min(initial=-1) < -1:
                raise file_error(
                    path, f"{where}: physical expert id outside the map's {to_logical.shape[1]} slots"
                )
            layer = np.arange(topk.shape[0])[:, None, None]
            logical = np.where(topk >= 0, to_logical[layer, np.maximum(topk, 0)], -1).transpose(1, 0, 2)
            lengths = list(record.get("extend_seq_lens") or [])
            if lengths and sum(lengths) == logical.shape[0]:
                bounds = np.cumsum([0, *lengths])
                for request, (lo, hi) in enumerate(itertools.pairwise(bounds)):
                    if hi > lo:
                        documents.append((logical[lo:hi], f"{path.stem}/pass{key[0]}/request{request}"))
            elif logical.shape[0]:
                decode = True
                documents.append((logical, f"{path.stem}/pass{key[0]}/decode"))
    if not documents:
        raise MoeplaceError(f"no tokens in {', '.join(map(str, paths))}")
    everything = np.concatenate([ids for ids, _ in documents])  # [T, all layers, 8]
    moe_layers = np.flatnonzero((everything >= 0).any(axis=(0, 2)))
    slots = np.flatnonzero((everything[:, moe_layers] >= 0).any(axis=(0, 1)))
    if not moe_layers.size:
        raise MoeplaceError("the dumps record no expert selections")
    num_experts = int(to_logical.max()) + 1 if options.num_experts is None else options.num_experts
    if to_logical.max() >= num_experts:
        raise MoeplaceError(
            f"the physical->logical map names expert {int(to_logical.max())}; --num-experts is {num_experts}"
        )
    meta = TraceMeta(
        model=options.model or "unknown (SGLang dump)",
        num_experts=num_experts,
        top_k=int(slots.size),
        layer_ids=tuple(int(x) for x in moe_layers),
        phase="mixed" if decode else "prefill",
        source=f"SGLang expert distribution recorder (per_token): {', '.join(p.name for p in paths)}",
        note="physical ids mapped to logical through each dump's last_physical_to_logical_map",
    )
    return meta, [(ids[:, moe_layers][:, :, slots], label) for ids, label in documents]


def read_stat(paths: Sequence[Path], options) -> Statistics:
    counts = None
    for path in paths:
        dump = load_pt(path)
        if not isinstance(dump, dict) or "logical_count" not in dump:
            raise file_error(path, "not an SGLang stat dump (needs 'logical_count')")
        count = _as_array(dump["logical_count"], path, "logical_count")
        count = count.sum(axis=0) if count.ndim == 3 else count
        if count.ndim != 2 or count.min(initial=0) < 0:
            raise file_error(path, "logical_count must be non-negative [steps, layers, experts] counts")
        if counts is not None and counts.shape != count.shape:
            raise file_error(
                path, f"logical_count has {count.shape} layers x experts, another file {counts.shape}"
            )
        counts = count if counts is None else counts + count
    if options.top_k is None:
        raise MoeplaceError("an SGLang stat dump does not record top-k: pass --top-k")
    moe_layers = np.flatnonzero(counts.sum(axis=1) > 0)
    if not moe_layers.size:
        raise MoeplaceError("the stat dumps count no expert selections")
    load = counts[moe_layers].astype(np.int64)
    num_experts = options.num_experts or load.shape[1]
    meta = TraceMeta(
        model=options.model or "unknown (SGLang dump)",
        num_experts=num_experts,
        top_k=options.top_k,
        layer_ids=tuple(int(x) for x in moe_layers),
        phase="mixed",
        source=f"SGLang expert distribution recorder (stat): {', '.join(p.name for p in paths)}",
        note="expert load only: no per-token routing, so no co-activation",
    )
    tokens = int(load[0].sum() // options.top_k)
    return Statistics(meta, load, None, np.zeros((len(moe_layers), 0, num_experts), np.int64), tokens, 0, 0)


def _check_every_expert_placed(to_logical: np.ndarray, num_experts: int | None, path: Path) -> None:
    """SGLang maps every logical expert to a slot in every layer's row (dense layers get the trivial
    ``p % N`` row); a map that leaves one out cannot be the map the engine served with."""
    num_experts = num_experts or int(to_logical.max(initial=0)) + 1
    for layer, row in enumerate(to_logical):
        missing = np.setdiff1d(np.arange(num_experts), row)
        if missing.size:
            raise file_error(
                path,
                f"last_physical_to_logical_map is inconsistent: layer {layer} gives logical expert "
                f"{int(missing[0])} no physical slot",
            )


def _as_array(value, path: Path, what: str) -> np.ndarray:
    try:
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    except (TypeError, ValueError):
        raise file_error(path, f"{what} is not an array") from None
    if array.dtype.kind not in "iu":
        raise file_error(path, f"{what} must hold integers, has {array.dtype}")
    return array.astype(np.int64)

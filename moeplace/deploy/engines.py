"""A placement in the formats serving engines load: SGLang, vllm-ascend, and a permutation plan.

Physical slots are numbered device-major: slot ``p`` lives on device ``p // slots_per_device``
(``Placement.physical_to_logical``). Every exporter checks the invariants the engine itself asserts
before anything is written, so a file that would crash the engine at start-up is never produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moeplace.atomic import atomic_path, write_text
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement

FORMATS = ("sglang", "vllm-ascend", "permutation")
PERMUTATION_FORMAT = "moeplace-permutation"


def sglang_expert_location(placement: Placement, num_hidden_layers: int | None = None) -> dict:
    """SGLang ``--init-expert-location``: ``{"physical_to_logical_map": int [num_hidden_layers, P]}``.

    One row per hidden layer of the model; rows of dense layers (and of MoE layers the placement
    does not cover) get SGLang's own trivial map ``p % N``, which is what it would use anyway.
    The dict holds that one key only: SGLang passes the keys as arguments to ``init_by_mapping``.
    """
    hidden = num_hidden_layers if num_hidden_layers is not None else placement.num_hidden_layers
    if hidden is None:
        raise MoeplaceError(
            "the placement does not record the model's layer count (the trace did not say); pass "
            "--num-hidden-layers (SGLang wants a row for every layer, dense ones included)"
        )
    if hidden <= max(placement.layer_ids):
        raise MoeplaceError(
            f"--num-hidden-layers {hidden}, but the placement has MoE layer {max(placement.layer_ids)}"
        )
    rows = placement.physical_to_logical
    table = np.tile(np.arange(rows.shape[1]) % placement.num_experts, (hidden, 1))
    table[list(placement.layer_ids)] = rows
    check_sglang_map(table, placement.num_experts, placement.num_devices, hidden)
    return {"physical_to_logical_map": table.tolist()}


def check_sglang_map(table: np.ndarray, num_logical: int, ep_size: int, num_layers: int) -> None:
    """What SGLang asserts when it builds ``ExpertLocationMetadata`` from a map (int ``[L, P]``).

    The physical count must split evenly over the EP ranks; every entry must be a logical id (it
    indexes ``logical_to_all_physical_map``); every logical expert needs a physical slot in every
    row (static dispatch picks among its slots and fails on none); one row per layer.
    """
    if table.ndim != 2 or table.shape[0] != num_layers:
        raise MoeplaceError(f"physical_to_logical_map has shape {table.shape}; need {num_layers} rows")
    if table.shape[1] % ep_size:
        raise MoeplaceError(f"{table.shape[1]} physical experts do not split over {ep_size} EP ranks")
    if table.min() < 0 or table.max() >= num_logical:
        raise MoeplaceError(f"physical_to_logical_map holds ids outside 0..{num_logical - 1}")
    for layer, row in enumerate(table):
        missing = np.setdiff1d(np.arange(num_logical), row)
        if missing.size:
            raise MoeplaceError(f"layer {layer}: logical expert {missing[0]} has no physical slot")


def vllm_ascend_expert_map(placement: Placement) -> dict:
    """vllm-ascend ``expert_map_path``: per MoE-layer ordinal, each device's experts in slot order."""
    slots = placement.topology.slots_per_device
    rows = placement.physical_to_logical.reshape(len(placement.layers), placement.num_devices, slots)
    return {
        "moe_layer_count": len(placement.layers),
        "layer_list": [
            {
                "layer_id": ordinal,
                "device_count": placement.num_devices,
                "device_list": [
                    {"device_id": device, "device_expert": experts.tolist()}
                    for device, experts in enumerate(layer_rows)
                ],
            }
            for ordinal, layer_rows in enumerate(rows)
        ],
    }


def permutation_plan(placement: Placement) -> dict:
    """For contiguous-placement engines (slot j on rank ``j // (N/D)``): at each MoE layer, new
    expert index j takes old expert ``new_to_old[j]`` (its weights and router row)."""
    if placement.redundant_slots:
        raise MoeplaceError(
            f"the placement has {placement.redundant_slots} redundant slots; engines with contiguous "
            "placement have no replicas (export it for sglang or vllm-ascend)"
        )
    return {
        "format": PERMUTATION_FORMAT,
        "version": 1,
        "model": placement.model,
        "num_experts": placement.num_experts,
        "num_devices": placement.num_devices,
        "experts_per_device": placement.topology.slots_per_device,
        "layers": [
            {"layer": layer_id, "new_to_old": row.tolist()}
            for layer_id, row in zip(placement.layer_ids, placement.physical_to_logical, strict=True)
        ],
    }


def export(placement: Placement, fmt: str, out: str | Path, num_hidden_layers: int | None = None) -> None:
    """Write ``placement`` as ``fmt`` to ``out`` atomically (SGLang: ``.pt`` if ``out`` ends so)."""
    out = Path(out)
    if fmt == "sglang":
        doc = sglang_expert_location(placement, num_hidden_layers)
        if out.suffix == ".pt":
            _save_torch(doc, out)
            return
    elif fmt == "vllm-ascend":
        doc = vllm_ascend_expert_map(placement)
    elif fmt == "permutation":
        doc = permutation_plan(placement)
    else:
        raise MoeplaceError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    write_text(out, json.dumps(doc, separators=(",", ":")) + "\n")


def _save_torch(doc: dict, out: Path) -> None:
    try:
        import torch
    except ImportError:
        raise MoeplaceError(
            f"{out}: writing .pt needs torch (pip install 'moeplace[calibrate]'); or write .json"
        ) from None
    tensors = {key: torch.tensor(value, dtype=torch.int64) for key, value in doc.items()}
    with atomic_path(out) as tmp:
        torch.save(tensors, tmp)

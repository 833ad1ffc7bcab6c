"""A placement in the formats serving engines load: SGLang, vllm-ascend, TensorRT-LLM, and a
permutation plan for engines with contiguous placement only.

Physical slots are numbered device-major: slot ``p`` lives on device ``p // slots_per_device``
(``Placement.physical_to_logical``), as every one of these engines numbers them. Every exporter
checks the invariants the engine asserts, and those it needs but does not check (a row per
hidden layer, no device with two copies of one expert), before anything is written. Tested against
the engines' own loading code: ``tests/engines/`` (SGLang 0.5.2 and 0.5.23, vllm-ascend 0.23.0 and
0.30.0rc2); TensorRT-LLM against its documented schema (its config code needs its GPU wheel).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import yaml

from moeplace.atomic import write_bytes, write_text
from moeplace.errors import MoeplaceError, did_you_mean
from moeplace.planner.placement import Placement
from moeplace.planner.slots import repeated_copy

FORMATS = ("sglang", "vllm-ascend", "tensorrt-llm", "permutation")
PERMUTATION_FORMAT = "moeplace-permutation"


def hidden_layers(placement: Placement, num_hidden_layers: int | None) -> tuple[int, str]:
    """The model's layer count for an SGLang map and where it came from; refuses a count that
    contradicts the placement (a row per layer is what SGLang indexes, and it checks neither)."""
    if num_hidden_layers is None and placement.num_hidden_layers is None:
        raise MoeplaceError(
            "the placement does not record the model's layer count (its trace did not say); give "
            "{=num_hidden_layers} (SGLang wants a row for every layer, dense ones included)"
        )
    if num_hidden_layers is None:
        return placement.num_hidden_layers, "recorded in the placement"
    if placement.num_hidden_layers is not None and num_hidden_layers != placement.num_hidden_layers:
        raise MoeplaceError(
            f"{{=num_hidden_layers}} {num_hidden_layers}, but the placement records "
            f"{placement.num_hidden_layers} layers for its model"
        )
    if num_hidden_layers <= max(placement.layer_ids):
        raise MoeplaceError(
            f"{{=num_hidden_layers}} {num_hidden_layers}, but the placement has MoE layer "
            f"{max(placement.layer_ids)}"
        )
    return num_hidden_layers, "as given"


def sglang_expert_location(placement: Placement, num_hidden_layers: int | None = None) -> dict:
    """SGLang ``--init-expert-location``: ``{"physical_to_logical_map": int [num_hidden_layers, P]}``.

    One row per hidden layer of the model; rows of dense layers (and of MoE layers the placement
    does not cover) get SGLang's own trivial map ``p % N``, which is what it would use anyway.
    The dict holds that one key only: SGLang passes the keys as arguments to ``init_by_mapping``.
    """
    hidden, _ = hidden_layers(placement, num_hidden_layers)
    rows = placement.physical_to_logical
    table = np.tile(np.arange(rows.shape[1]) % placement.num_experts, (hidden, 1))
    table[list(placement.layer_ids)] = rows
    check_sglang_map(table, placement.num_experts, placement.num_devices, hidden)
    return {"physical_to_logical_map": table.tolist()}


def check_sglang_map(table: np.ndarray, num_logical: int, ep_size: int, num_layers: int) -> None:
    """What SGLang asserts when it builds ``ExpertLocationMetadata`` from a map (int ``[L, P]``).

    The physical count must split evenly over the EP ranks; every entry must be a logical id (it
    indexes ``logical_to_all_physical_map``); every logical expert needs a physical slot in every
    row (static dispatch picks among its slots and fails on none); one row per layer. And what
    SGLang does not check but needs: no rank with two slots of one expert (with an all-to-all
    backend it loads one local copy per expert; the other slot never gets weights).
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
        repeat = repeated_copy(row, table.shape[1] // ep_size)
        if repeat is not None:
            device, expert, copies = repeat
            raise MoeplaceError(f"layer {layer}: EP rank {device} holds {copies} slots of expert {expert}")


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


def tensorrt_llm_load_balancer(placement: Placement) -> dict:
    """TensorRT-LLM wide-EP load balancer YAML (``moe_config.load_balancer``): ``num_slots`` N + R,
    ``initial_global_assignments`` keyed by the model's layer index of each MoE layer, the expert in
    each slot, ``num_slots / ep_size`` consecutive slots per rank; ``layer_updates_per_iter: 0``
    keeps the placement static. Source: NVIDIA/TensorRT-LLM ``examples/wide_ep/ep_load_balancer/``
    and ``MoeLoadBalancerConfig`` (llmapi/llm_args.py)."""
    return {
        "num_slots": placement.topology.num_physical,
        "initial_global_assignments": {
            layer_id: row.tolist()
            for layer_id, row in zip(placement.layer_ids, placement.physical_to_logical, strict=True)
        },
        "layer_updates_per_iter": 0,
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
    elif fmt == "tensorrt-llm":
        doc = tensorrt_llm_load_balancer(placement)
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=1 << 20)
        write_text(out, text)
        return
    elif fmt == "permutation":
        doc = permutation_plan(placement)
    else:
        raise MoeplaceError(
            f"unknown format {fmt!r}{did_you_mean(fmt, FORMATS)}; choose from {', '.join(FORMATS)}"
        )
    write_text(out, json.dumps(doc, separators=(",", ":")) + "\n")


def _save_torch(doc: dict, out: Path) -> None:
    try:
        import torch
    except ImportError:
        raise MoeplaceError(
            f"{out}: writing .pt needs torch (pip install 'moeplace[calibrate]'); or write .json"
        ) from None
    tensors = {key: torch.tensor(value, dtype=torch.int64) for key, value in doc.items()}
    buffer = io.BytesIO()  # saved to memory: torch names the archive after a file it writes to,
    torch.save(tensors, buffer)  # and a temporary file's name would make every export differ
    write_bytes(out, buffer.getvalue())


def launch_flags(placement: Placement, fmt: str, out: Path, num_hidden_layers: int | None) -> list[str]:
    """What to tell the engine about the file ``export`` wrote, one line each (see docs/deploy.md)."""
    d, r, spd = placement.num_devices, placement.redundant_slots, placement.topology.slots_per_device
    slots = f"{d * spd} slots ({placement.num_experts} experts + {r} redundant), {spd} per rank"
    if fmt == "sglang":
        hidden, origin = hidden_layers(placement, num_hidden_layers)
        return [
            f"SGLang (tested 0.5.2, 0.5.23): {hidden} rows, one per hidden layer ({origin}); {slots}",
            f"  --ep-size {d} --ep-num-redundant-experts {r} --init-expert-location {out} "
            "--ep-dispatch-algorithm static (with --moe-a2a-backend; without one, 0.5.23 needs dynamic)",
            f"  SGLang does not check the map against --ep-num-redundant-experts: it must be {r}; leave "
            "--enable-eplb off, its first rebalance replaces this placement",
        ]
    if fmt == "vllm-ascend":
        config = {"eplb_config": {"expert_map_path": str(out), "num_redundant_experts": r}}
        return [
            f"vllm-ascend (tested 0.23.0, 0.30.0rc2): {len(placement.layers)} MoE layers by ordinal; {slots}",
            f"  --enable-expert-parallel with {d} EP ranks, --additional-config '{json.dumps(config)}'",
        ]
    if fmt == "tensorrt-llm":
        return [
            f"TensorRT-LLM wide-EP: {len(placement.layers)} MoE layers by model layer index; {slots}",
            f"  extra LLM API options: moe_config: {{backend: WIDEEP, load_balancer: {out}}}, "
            f"moe_expert_parallel_size: {d}, enable_attention_dp: true",
        ]
    return [
        f"contiguous placement: apply with `moeplace permute-checkpoint SRC DST --placement {out}`, "
        f"then serve with {d} EP ranks and linear placement"
    ]

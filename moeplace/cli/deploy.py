"""``moeplace export`` and ``permute-checkpoint``: a placement in the form a serving engine loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moeplace.atomic import check_distinct
from moeplace.calibrate.trace import MAX_LAYERS
from moeplace.cli.app import user_errors
from moeplace.cli.console import named, out
from moeplace.cli.options import choices
from moeplace.deploy.engines import FORMATS, export, launch_flags
from moeplace.deploy.permute import permute_checkpoint, read_permutation
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import load_placement

PlacementArg = Annotated[Path, typer.Argument(help="Placement YAML from `moeplace plan`.")]

ExportFormat = choices("ExportFormat", FORMATS)


@user_errors
def export_command(
    placement_file: PlacementArg,
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="sglang: --init-expert-location JSON (.pt if --out ends in .pt); vllm-ascend: "
            "eplb_config expert_map_path JSON; tensorrt-llm: wide-EP load balancer YAML; permutation: "
            "per-layer expert order for engines with contiguous placement (apply it with `moeplace "
            "permute-checkpoint`).",
        ),
    ],
    out_file: Annotated[Path, typer.Option("--out", help="File to write (replaced atomically).")],
    num_hidden_layers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_LAYERS,
            help="sglang: the model's layer count, dense layers included (default: from the placement, "
            "when its trace recorded it; must agree with it when both say).",
        ),
    ] = None,
):
    """Write a placement in a serving engine's own format, checked against that engine's rules,
    and print the engine flags that serve it (EP size, redundant experts, dispatch, layer count).
    """
    fmt = fmt.value
    check_distinct([placement_file], [out_file])
    placement = load_placement(placement_file)
    with named(placement_file):
        export(placement, fmt, out_file, num_hidden_layers)
    out.print(
        f"wrote {out_file}: {fmt}, {len(placement.layers)} MoE layers, {placement.num_experts} experts "
        f"on {placement.num_devices} devices"
    )
    for line in launch_flags(placement, fmt, out_file, num_hidden_layers):
        out.print(line, highlight=False, soft_wrap=True)


@user_errors
def permute_checkpoint_command(
    src: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory (safetensors).")],
    dst: Annotated[Path, typer.Argument(help="Directory for the rewritten checkpoint (written atomically).")],
    placement_file: Annotated[
        Path,
        typer.Option(
            "--placement",
            help="Placement YAML from `moeplace plan`, or the JSON of `export --format permutation`.",
        ),
    ],
):
    """Renumber a checkpoint's experts so contiguous placement (expert j on rank j // (N/D), as in
    vLLM, Megatron-LM, DeepSpeed) realizes the placement; the model's outputs are unchanged.

    Refuses permutations that would cross DeepSeek's routing groups, and placements with replicas
    (contiguous engines have none).
    """
    check_distinct([src, placement_file], [dst])
    if placement_file.suffix == ".json":
        mapping = read_permutation(placement_file)
    else:
        placement = load_placement(placement_file)
        if placement.redundant_slots:
            raise MoeplaceError(
                f"{placement_file}: has {placement.redundant_slots} redundant slots; a checkpoint "
                "permutation cannot express replicas (export it for SGLang or vllm-ascend instead)"
            )
        mapping = dict(zip(placement.layer_ids, placement.physical_to_logical, strict=True))
    report = permute_checkpoint(src, dst, mapping, origin=placement_file)
    tensors = sum(layer["tensors_permuted"] for layer in report["layers"].values())
    out.print(f"wrote {dst}: experts of {len(mapping)} MoE layers renumbered ({tensors} tensors)")

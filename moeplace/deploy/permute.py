"""Renumber the experts of a Hugging Face safetensors checkpoint, for contiguous-placement engines.

vLLM (linear EP), Megatron and DeepSpeed put expert j on rank ``j // (N/D)``. To realise another
expert->device placement there, the checkpoint itself is rewritten so that new expert j is old
expert ``new_to_old[j]``: its weights move to index j and its router row (and any per-expert router
vector: gpt-oss ``router.bias``, DeepSeek-V3 ``gate.e_score_correction_bias``) to row j. A top-k
router is permutation-equivariant, so the model computes the same function.

Under ``[model.][language_model.]layers.<l>.(mlp|block_sparse_moe).``: router ``gate.*``/``router.*``
(rows ``[N, ...]``), per-expert ``experts.<i>.*`` (renamed; Mixtral, Qwen, DeepSeek as saved by
transformers 5) and fused ``experts.<name>`` (``[N, ...]``: gpt-oss). Shared experts stay; each
tensor stays in its shard. Tensors go through ``safetensors.numpy``; a shard with a dtype NumPy lacks
(bfloat16, float8) goes through ``safetensors.torch``, and only then is torch imported (lazily).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from moeplace.atomic import atomic_dir
from moeplace.calibrate.model_config import group_limit
from moeplace.calibrate.safe_io import loads_json, read_text
from moeplace.calibrate.trace import MAX_EXPERTS, MAX_LAYERS
from moeplace.deploy.engines import PERMUTATION_FORMAT
from moeplace.errors import MoeplaceError, file_error

MARKER = "moeplace-permutation.json"  # written into every output: the mapping, and "ours to replace"
INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")
NUMPY_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64"}
KEY = re.compile(
    r"^((?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d+)\.(?:mlp|block_sparse_moe)\.)(.+)$"
)
ROUTER, ROUTER_WEIGHT = re.compile(r"^(?:gate|router)\.[^.]+$"), re.compile(r"^(?:gate|router)\.weight$")
PER_EXPERT, FUSED = re.compile(r"^experts\.(\d+)\.(.+)$"), "experts."


def routing_groups(config: Mapping) -> int:
    """How many expert groups the router limits each token to (1: no limit), from ``config.json``
    (``group_limit``)."""
    limit = group_limit(dict(config))
    return 1 if limit is None else limit[0]


def check_group_safe(config: Mapping, layer_id: int, new_to_old: np.ndarray) -> None:
    """Raise ``MoeplaceError`` unless ``new_to_old`` (int ``[N]``) keeps group-limited routing intact.

    Groups are consecutive blocks of ``N / n_group`` experts; the router picks groups first, so each
    new group must hold exactly one old group's experts (reordered within it, or the whole group moved).
    """
    groups = routing_groups(config)
    if groups == 1:
        return
    perm = np.asarray(new_to_old)
    if perm.shape[0] % groups:
        raise MoeplaceError(f"layer {layer_id}: {perm.shape[0]} experts do not split into {groups} groups")
    size = perm.shape[0] // groups
    old_group = perm.reshape(groups, size) // size  # [groups, size]: old group of each new expert
    mixed = np.flatnonzero((old_group != old_group[:, :1]).any(axis=1))
    if mixed.size:
        g = int(mixed[0])
        raise MoeplaceError(
            f"layer {layer_id}: new experts {g * size}-{g * size + size - 1} (group {g}) would be old "
            f"experts {perm[g * size : (g + 1) * size].tolist()} from groups {old_group[g].tolist()}; the "
            f"router picks groups of {size} consecutive experts (n_group {groups}) before experts, so each "
            "new group must be one old group, reordered or moved whole"
        )


def read_permutation(path: str | Path) -> dict[int, np.ndarray]:
    """``{layer: new_to_old int64 [N]}`` from a permutation plan (``moeplace export --format permutation``
    or the ``moeplace-permutation.json`` of a permuted checkpoint)."""
    path = Path(path)
    try:
        doc = loads_json(read_text(path), "the file")
    except MoeplaceError as exc:
        raise file_error(path, f"not a readable {PERMUTATION_FORMAT} JSON file ({exc})") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != PERMUTATION_FORMAT
        or not isinstance(doc.get("layers"), list)
    ):
        raise file_error(path, f"not a readable {PERMUTATION_FORMAT} JSON file")
    mapping = {}
    for row in doc["layers"]:
        layer = row.get("layer") if isinstance(row, dict) else None
        order = row.get("new_to_old") if isinstance(row, dict) else None
        if type(layer) is not int or not 0 <= layer < MAX_LAYERS or layer in mapping:
            raise file_error(
                path, f"a layer must be a model layer index in 0..{MAX_LAYERS - 1}, once; got {layer!r}"
            )
        if not isinstance(order, list) or not all(type(x) is int and 0 <= x < MAX_EXPERTS for x in order):
            raise file_error(path, f"layer {layer}: new_to_old must be a list of expert indices")
        mapping[layer] = np.array(order, dtype=np.int64)
    return mapping


def permute_checkpoint(
    src: str | Path, dst: str | Path, new_to_old: Mapping[int, np.ndarray], origin: Path | None = None
) -> dict:
    """Rewrite the safetensors HF checkpoint directory ``src`` into ``dst`` with experts renumbered.

    new_to_old: ``{model layer index l: int array [N]}`` -- at MoE layer l, new expert j = old expert
    ``new_to_old[l][j]``. Layers not in the mapping are copied unchanged, as are all non-weight files.
    ``dst`` is written atomically and replaces only an earlier output of this function. Errors in
    the mapping name ``origin`` (the file it came from), else ``src``. Returns
    ``{"layers": {l: {"num_experts", "tensors_permuted"}}, "shards", "copied", "skipped"}``.
    """
    src = Path(src)
    if not src.is_dir():
        raise file_error(src, "no such checkpoint directory")
    shards, index = _shard_files(src)
    origin = Path(origin) if origin is not None else src
    perms = {int(layer): _as_permutation(origin, int(layer), perm) for layer, perm in new_to_old.items()}
    specs = {shard: _specs(src / shard) for shard in shards}  # {shard: {name: (shape, dtype)}}
    shapes = {name: shape for spec in specs.values() for name, (shape, _) in spec.items()}
    if index is not None and (missing := [name for name in index["weight_map"] if name not in shapes]):
        raise file_error(src / INDEX, f"lists {missing[0]} but no shard holds it")
    plan, layers = _plan(src, shapes, perms, origin)
    config = _read_config(src / "config.json")
    for layer, perm in perms.items():
        try:
            check_group_safe(config, layer, perm)
        except MoeplaceError as exc:
            raise file_error(src / "config.json", exc) from None
    report = {"layers": layers, "shards": shards, "copied": [], "skipped": []}
    with atomic_dir(dst, replaceable=lambda p: (p / MARKER).is_file()) as tmp:
        for path in sorted(src.iterdir()):  # weights not in the checkpoint and folders are left out
            if path.is_file() and not path.name.endswith(WEIGHT_FILES) and path.name != MARKER:
                shutil.copy2(path, tmp / path.name)
                report["copied"].append(path.name)
            elif path.name not in shards and path.name != INDEX:
                report["skipped"].append(path.name)
        new_map = {}
        for shard in shards:
            numpy_ok = {dtype for _, dtype in specs[shard].values()} <= NUMPY_DTYPES
            new_map |= _rewrite_shard(src / shard, tmp / shard, plan, "np" if numpy_ok else "pt")
        if index is not None:
            (tmp / INDEX).write_text(
                json.dumps(index | {"weight_map": dict(sorted(new_map.items()))}, indent=2)
            )
        rows = [{"layer": layer, "new_to_old": perm.tolist()} for layer, perm in sorted(perms.items())]
        marker = {"format": PERMUTATION_FORMAT, "version": 1, "source": str(src.resolve()), "layers": rows}
        (tmp / MARKER).write_text(json.dumps(marker, separators=(",", ":")) + "\n")
    return report


def _shard_files(src: Path) -> tuple[list[str], dict | None]:
    """Names of the safetensors files to rewrite, and the parsed shard index (None: one file)."""
    if (src / INDEX).is_file():
        try:
            index = loads_json(read_text(src / INDEX), INDEX)
            shards = sorted(set(index["weight_map"].values()))
        except (MoeplaceError, ValueError, KeyError, TypeError, AttributeError):
            raise file_error(src / INDEX, "not a safetensors shard index (no weight_map)") from None
        if absent := [shard for shard in shards if not (src / shard).is_file()]:
            raise file_error(src / absent[0], "shard listed in model.safetensors.index.json is missing")
        return shards, index
    if (src / SINGLE).is_file():
        return [SINGLE], None
    if any(src.glob("*.bin")) or any(src.glob("*.pt")) or any(src.glob("*.pth")):
        raise file_error(
            src, "holds pickle weights only (.bin/.pt); refusing to load them: convert to safetensors"
        )
    raise file_error(src, f"no {SINGLE} or {INDEX}: not a safetensors Hugging Face checkpoint")


def _specs(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{tensor name: (shape, safetensors dtype)}`` of one file, from its header."""
    try:
        with safe_open(path, "np") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118 (not iterable)
            return {name: (tuple(s.get_shape()), s.get_dtype()) for name, s in slices.items()}
    except (OSError, SafetensorError) as exc:
        raise file_error(path, f"not a readable safetensors file ({exc})") from None


def _read_config(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        config = loads_json(read_text(path), "config.json")
    except MoeplaceError as exc:
        raise file_error(path, f"not a readable JSON file ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("text_config") or {}, dict):
        raise file_error(path, "not a JSON object of model settings")
    return config


def _as_permutation(src: Path, layer: int, perm) -> np.ndarray:
    arr = np.asarray(perm)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or not np.array_equal(np.sort(arr), np.arange(arr.size)):
        raise file_error(src, f"layer {layer}: new_to_old is not a permutation of 0..{arr.size - 1}")
    return arr.astype(np.int64)


def _plan(src: Path, shapes: dict, perms: dict[int, np.ndarray], origin: Path) -> tuple[dict, dict]:
    """``{name: (new name, rows int [N] to take along dim 0, or None)}`` for permuted tensors only,
    and the per-layer report. Raises ``MoeplaceError`` for a layer that is not a matching MoE layer."""
    entries: dict[int, list] = {layer: [] for layer in perms}
    for name in shapes:
        if (match := KEY.match(name)) and int(match[2]) in perms:
            entries[int(match[2])].append((name, match[1], match[3]))
    plan, layers = {}, {}
    for layer, perm in perms.items():
        router = [name for name, _, rest in entries[layer] if ROUTER_WEIGHT.match(rest)]
        if len(router) != 1:
            found = f"{len(router)} MoE routers" if router else "no MoE router"
            where = "" if origin == src else f" in {src}"
            raise file_error(origin, f"layer {layer}: {found}{where} (layers.{layer}.mlp.gate/router.weight)")
        n, old_to_new, indices, fused, count = shapes[router[0]][0], np.argsort(perm), set(), 0, 0
        if perm.size != n:
            where = "the router" if origin == src else f"the router in {src}"
            raise file_error(origin, f"layer {layer}: {where} has {n} experts, new_to_old has {perm.size}")
        for name, prefix, rest in entries[layer]:
            if match := PER_EXPERT.match(rest):
                indices.add(int(match[1]))
                if int(match[1]) < n:
                    plan[name] = (f"{prefix}experts.{old_to_new[int(match[1])]}.{match[2]}", None)
            elif ROUTER.match(rest) or rest.startswith(FUSED):
                if shapes[name][:1] != (n,):
                    raise file_error(
                        src, f"{name} has shape {list(shapes[name])}, not {n} experts along dim 0"
                    )
                plan[name], fused = (name, perm), fused + rest.startswith(FUSED)
            count += name in plan
        if not (indices or fused):
            raise file_error(src, f"layer {layer}: a router but no experts.<i>.* or fused experts.* tensors")
        if indices and indices != set(range(n)):
            raise file_error(
                src,
                f"layer {layer}: experts.<i> for {len(indices)} indices up to {max(indices)}; router has {n}",
            )
        layers[layer] = {"num_experts": n, "tensors_permuted": count}
    return plan, layers


def _rewrite_shard(src: Path, dst: Path, plan: dict, framework: str) -> dict[str, str]:
    """Copy one shard with ``plan`` applied (dtypes and metadata kept); ``{new name: shard name}``."""
    if framework == "np":
        from safetensors.numpy import save_file
    else:
        try:
            import torch
            from safetensors.torch import save_file
        except ImportError:
            raise file_error(
                src, "holds bfloat16/float8 tensors, which need torch: pip install torch"
            ) from None
    tensors = {}
    with safe_open(src, framework) as f:
        metadata = f.metadata()
        for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            new, rows = plan.get(name, (name, None))
            tensor = f.get_tensor(name)
            if rows is not None:
                tensor = tensor[rows if framework == "np" else torch.from_numpy(rows)]
            tensors[new] = tensor
    save_file(tensors, dst, metadata=metadata)
    return dict.fromkeys(tensors, dst.name)

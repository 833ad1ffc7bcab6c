"""TensorRT-LLM's expert statistics (offline EPLB), one workload a directory, as load-only statistics.

With ``EXPERT_STATISTIC_ITER_RANGE=A-B`` and ``EXPERT_STATISTIC_PATH=DIR`` set, TensorRT-LLM's PyTorch
backend (``tensorrt_llm/_torch/expert_statistic.py``, ``ExpertStatistic``) counts, in iterations
A <= i < B, the tokens each MoE layer routes to each expert and writes DIR/``meta_info.json``
(rank 0: ``{"num_experts": N, "num_experts_per_token": k}``) and DIR/``rank{r}.safetensors`` (every
rank): one 1-D integer tensor ``[N]`` a key ``"{iter}_{layer}"`` (``torch.bincount``, so int64), the
layer being the MoE module's ``layer_idx``: the model's layer index, dense layers skipped. With its
load balancer on, N counts expert slots, not experts. Each rank counts its own tokens; a recording
is the sum over ranks. ``rank*_raw.safetensors`` (raw routed ids, not counts) are not read.

``read_stat`` follows what TensorRT-LLM's own reader, ``load_expert_statistic`` in
``examples/wide_ep/ep_load_balancer/utils.py``, accepts (ranks summed; the iterations recorded are
consecutive and each records every layer), and ``--iterations A:B`` selects A <= iter < B as its
``generate_eplb_config.py`` ``--iter_start``/``--iter_stop`` do. The code is ours.

Each directory is one workload, labelled by its name or ``ImportOptions.labels``; directories with
the same label are shards of one workload and sum. The statistics keep the workloads apart
(``Statistics.workload_load``), like ``sglang_load``.
"""

from __future__ import annotations

import dataclasses
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moeplace.calibrate.importers.workloads import workload_statistics
from moeplace.calibrate.safe_io import check_regular_file, loads_json, read_text
from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.trace import MAX_EXPERTS, MAX_LAYERS, TraceMeta
from moeplace.errors import MoeplaceError, file_error

MAX_META_BYTES = 1 << 20  # meta_info.json is a few dozen bytes
MAX_TENSORS = 1 << 20  # tensors a rank file may hold: iterations x MoE layers
MAX_RANKS = 1 << 12  # wide expert parallelism runs a few hundred
# all counts of one import together stay below this, so no sum (a layer's, a workload's) nears
# int64's end
MAX_TOTAL = 2.0**62
# dtypes numpy reads that a count may have: TensorRT-LLM writes int64 (torch.bincount)
COUNT_DTYPES = {"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "F16", "F32", "F64"}
KEY = re.compile(r"(0|[1-9][0-9]*)_(0|[1-9][0-9]*)")  # "{iter}_{layer}", as the writer formats ints


def read_stat(paths: Sequence[Path], options) -> Statistics:
    """Statistics of one workload per label: ``load`` ``[L, N]`` over the recorded MoE layers, summed
    over ranks and the selected iterations; no co-activation."""
    if options.iterations is not None:
        start, stop = options.iterations
        if not 0 <= start < stop:
            raise MoeplaceError(f"--iterations {start}:{stop} is empty: give A:B with 0 <= A < B")
    labels = options.labels or tuple(_name(path) for path in paths)
    if len(labels) != len(paths):
        raise MoeplaceError(
            f"--label names {len(labels)} workloads for {len(paths)} directories: one label a directory"
        )
    records = [_read_directory(Path(path), options.iterations) for path in paths]
    first = records[0]
    for path, record in zip(paths[1:], records[1:], strict=True):
        if record.layers != first.layers or record.num_experts != first.num_experts:
            raise file_error(
                path,
                f"records {len(record.layers)} MoE layers x {record.num_experts} experts "
                f"(layers {_span(record.layers)}), {paths[0]} {len(first.layers)} x {first.num_experts} "
                f"(layers {_span(first.layers)}): every workload must record the same model",
            )
        if record.top_k != first.top_k:
            raise file_error(
                record.meta_path, f"says top-{record.top_k}, {first.meta_path} top-{first.top_k}"
            )
    n, layers = first.num_experts, first.layers
    top_k = _top_k(first, options)
    _check_layers(paths[0], layers, n, options)
    grand_total = 0.0
    for record in records:
        grand_total += record.total
        if grand_total >= MAX_TOTAL:
            raise file_error(record.path, "counts summed over the recordings reach 2^62")
    layout = options.layout
    groups = layout.group_limit if layout is not None else None
    meta = TraceMeta(
        model=options.model or "unknown (TensorRT-LLM expert statistic)",
        num_experts=n,
        top_k=top_k,
        layer_ids=layers,
        phase="mixed",
        source=f"TensorRT-LLM expert statistic: {', '.join(_name(p) for p in paths)}"
        + (f", iterations {options.iterations[0]}:{options.iterations[1]}" if options.iterations else ""),
        note="expert load only, one workload per label: no per-token routing, so no co-activation",
        num_hidden_layers=layout.num_hidden_layers if layout is not None else None,
        routing_groups=groups[0] if groups else None,
        groups_per_token=groups[1] if groups else None,
    )
    return workload_statistics(paths, labels, [record.load for record in records], meta)


@dataclasses.dataclass(frozen=True)
class _Record:
    """One directory: its counts ``load`` int64 ``[L, N]`` over ``layers`` (ascending), summed over
    ranks and the selected iterations, and what its ``meta_info.json`` says."""

    path: Path
    meta_path: Path
    num_experts: int
    top_k: int | None
    layers: tuple[int, ...]
    load: np.ndarray
    total: float  # the sum of ``load``


def _name(path: Path) -> str:
    path = Path(path)
    return path.name or path.resolve().name


def _span(layers) -> str:
    return f"{layers[0]}..{layers[-1]}" if layers else "none"


def _read_directory(path: Path, iterations: tuple[int, int] | None) -> _Record:
    """The ranks of one recording summed: ``MoeplaceError`` naming the file at fault else."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise file_error(path, "no such directory") from None
    except OSError as exc:
        raise file_error(path, f"unreadable ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(mode):
        raise file_error(
            path,
            "is not a directory; give TensorRT-LLM's EXPERT_STATISTIC_PATH, which holds meta_info.json "
            "and rank*.safetensors",
        )
    meta_path = path / "meta_info.json"
    if not meta_path.exists():
        raise file_error(meta_path, "missing: not a TensorRT-LLM expert statistic directory")
    num_experts, top_k = _read_meta(meta_path)
    # the files TensorRT-LLM's loader sums: rank*.safetensors but not rank*_raw.safetensors
    ranks = sorted(
        (p for p in path.glob("rank*.safetensors") if not p.name.endswith("_raw.safetensors")),
        key=lambda p: (len(p.name), p.name),
    )
    if not ranks:
        raise file_error(path, "holds no rank*.safetensors: no rank's counts to read")
    if len(ranks) > MAX_RANKS:
        raise file_error(path, f"holds {len(ranks)} rank files, more than any recording ({MAX_RANKS})")
    headers = [_read_header(rank, num_experts) for rank in ranks]
    # the ranks of one pipeline stage record the same layers, those of different stages none in common
    rank_layers = [frozenset(layer for _, layer in keys) for keys in headers]
    stages = list(dict.fromkeys(rank_layers))
    for index, layers in enumerate(stages):
        other = next((o for o in stages[:index] if o & layers), None)
        if other is not None:
            rank, peer = ranks[rank_layers.index(layers)], ranks[rank_layers.index(other)]
            raise file_error(
                rank,
                f"records layers {_span(sorted(layers))} ({len(layers)}), {peer.name} "
                f"{_span(sorted(other))} ({len(other)}): the ranks of one recording must record the same "
                "layers (or, pipeline stages, none in common)",
            )
    keys = set().union(*headers)
    recorded = sorted({it for it, _ in keys})
    layers = tuple(sorted({layer for _, layer in keys}))
    if recorded[-1] + 1 - recorded[0] != len(recorded):
        gap = next(i for i in range(recorded[0], recorded[-1]) if i not in set(recorded))
        raise file_error(path, f"records iterations {recorded[0]}..{recorded[-1]} but not iteration {gap}")
    if len(keys) != len(recorded) * len(layers):
        it, layer = next((i, la) for i in recorded for la in layers if (i, la) not in keys)
        raise file_error(path, f"no rank records layer {layer} in iteration {it}, which others record")
    start, stop = iterations if iterations is not None else (recorded[0], recorded[-1] + 1)
    if not any(start <= it < stop for it in recorded):
        raise file_error(
            path,
            f"iterations {start}:{stop} select nothing: it records iterations {recorded[0]}..{recorded[-1]}",
        )
    load = np.zeros((len(layers), num_experts), np.int64)
    row = {layer: i for i, layer in enumerate(layers)}
    total = 0.0
    for rank, rank_keys in zip(ranks, headers, strict=True):
        total = _add_counts(rank, sorted(k for k in rank_keys if start <= k[0] < stop), row, load, total)
    return _Record(path, meta_path, num_experts, top_k, layers, load, total)


def _read_meta(path: Path) -> tuple[int, int | None]:
    """``num_experts`` and ``num_experts_per_token`` (None if absent) of ``meta_info.json``."""
    meta = loads_json(read_text(path, MAX_META_BYTES), str(path))
    if not isinstance(meta, dict):
        raise file_error(
            path, 'must be a JSON object such as {"num_experts": 256, "num_experts_per_token": 8}'
        )
    n = meta.get("num_experts")
    if type(n) is not int or not 1 <= n <= MAX_EXPERTS:
        raise file_error(path, f"num_experts must be a whole number in 1..{MAX_EXPERTS}, not {n!r}")
    k = meta.get("num_experts_per_token")
    if k is not None and (type(k) is not int or not 1 <= k <= n):
        raise file_error(path, f"num_experts_per_token must be a whole number in 1..{n}, not {k!r}")
    return n, k


def _open(path: Path):
    from safetensors import SafetensorError, safe_open

    check_regular_file(path)
    try:
        return safe_open(path, framework="numpy")
    except (SafetensorError, OSError, ValueError) as exc:
        raise file_error(path, f"not a readable safetensors file ({exc})") from None


def _read_header(path: Path, num_experts: int) -> set[tuple[int, int]]:
    """The ``(iter, layer)`` keys of one rank file, each tensor's name, dtype and shape checked
    from the header: nothing is read or allocated yet."""
    keys = set()
    with _open(path) as handle:
        names = list(handle.keys())
        if not names:
            raise file_error(path, "holds no tensor: this rank recorded nothing")
        if len(names) > MAX_TENSORS:
            raise file_error(path, f"holds {len(names):,} tensors, more than any recording ({MAX_TENSORS:,})")
        for name in names:
            match = KEY.fullmatch(name)
            if match is None:
                raise file_error(path, f"tensor {name!r} is not named {{iter}}_{{layer}} (such as '100_3')")
            it, layer = int(match[1]), int(match[2])
            if layer >= MAX_LAYERS or it >= 2**62:
                raise file_error(
                    path, f"tensor {name!r}: layer {layer} or iteration {it} is past any model's"
                )
            view = handle.get_slice(name)
            dtype, shape = view.get_dtype(), view.get_shape()
            if dtype not in COUNT_DTYPES:
                raise file_error(
                    path, f"tensor {name!r} holds {dtype}; counts are integers (TensorRT-LLM writes int64)"
                )
            if list(shape) != [num_experts]:
                raise file_error(
                    path,
                    f"tensor {name!r} has shape {list(shape)}; meta_info.json says {num_experts} experts, "
                    f"so each holds [{num_experts}] counts",
                )
            keys.add((it, layer))
    return keys


def _add_counts(path: Path, keys, row: dict[int, int], load: np.ndarray, total: float) -> float:
    """Add the counts of ``keys`` in one rank file to ``load``, each checked first; ``total``, the
    sum of ``load`` so far, is returned grown by them."""
    with _open(path) as handle:
        for it, layer in keys:
            count = handle.get_tensor(f"{it}_{layer}")
            where = f"tensor '{it}_{layer}'"
            if count.dtype.kind == "f":
                bad = ~np.isfinite(count) | (count < 0)
                if bad.any():
                    expert = int(np.flatnonzero(bad)[0])
                    raise file_error(
                        path, f"{where} holds {count[expert]} for expert {expert}: counts are finite and >= 0"
                    )
                fractional = count != np.rint(count)
                if fractional.any():
                    expert = int(np.flatnonzero(fractional)[0])
                    raise file_error(
                        path,
                        f"{where} holds {count[expert]} for expert {expert}: it counts routed tokens, "
                        "whole numbers",
                    )
            elif count.dtype.kind == "i" and (count < 0).any():
                expert = int(np.flatnonzero(count < 0)[0])
                raise file_error(
                    path, f"{where} holds {count[expert]} for expert {expert}: counts are finite and >= 0"
                )
            total += float(count.sum(dtype=np.float64))
            if total >= MAX_TOTAL:
                raise file_error(path, f"{where}: counts summed over ranks and iterations reach 2^62")
            load[row[layer]] += count.astype(np.int64)
    return total


def _top_k(record: _Record, options) -> int:
    """meta_info.json's top-k, which the model config and --top-k must agree with."""
    given = options.layout.top_k if options.layout is not None else options.top_k
    source = "the model config" if options.layout is not None else "--top-k"
    if record.top_k is None:
        if given is None:
            raise file_error(
                record.meta_path, "does not say num_experts_per_token: pass --top-k or --model-config"
            )
        top_k = given
    else:
        if given is not None and given != record.top_k:
            raise file_error(record.meta_path, f"says top-{record.top_k}, {source} top-{given}")
        top_k = record.top_k
    if top_k > record.num_experts:
        raise MoeplaceError(f"top-k {top_k} exceeds the {record.num_experts} experts the records count")
    return top_k


def _check_layers(path: Path, layers: tuple[int, ...], n: int, options) -> None:
    """The recorded layers and experts against the model config (or --layer-ids, --num-experts)."""
    layout = options.layout
    if layout is not None and n != layout.num_experts:
        raise file_error(
            path,
            f"counts {n} experts; the model config says {layout.num_experts} routed experts (with its load "
            "balancer on, TensorRT-LLM counts expert slots: record with it off)",
        )
    if options.num_experts is not None and options.num_experts != n:
        raise file_error(path, f"counts {n} experts, --num-experts says {options.num_experts}")
    expected = layout.layer_ids if layout is not None else options.layer_ids
    if expected is None:
        return
    source = "the model config" if layout is not None else "--layer-ids"
    extra = sorted(set(layers) - set(expected))
    if extra:
        hidden = f" ({layout.num_hidden_layers} hidden layers)" if layout is not None else ""
        raise file_error(
            path, f"records layer {extra[0]}, which is not a MoE layer of the model by {source}{hidden}"
        )
    missing = sorted(set(expected) - set(layers))
    if missing:
        raise file_error(path, f"records no counts for MoE layer {missing[0]} (by {source})")

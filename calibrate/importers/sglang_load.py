"""SGLang's load records, ``{"logical_count": [num_hidden_layers, N]}`` JSON, as workload statistics.

The form SGLang's ``--init-expert-location`` accepts and its expert-distribution tooling writes:
per hidden layer (dense layers included, their rows zero) the tokens routed to each logical expert.
Each file is one workload, labelled by its file stem or ``ImportOptions.labels``; files with the same
label are shards of one workload and sum. The statistics keep the workloads apart
(``Statistics.workload_load``), because balance is lost between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moeplace.calibrate.importers.workloads import workload_statistics
from moeplace.calibrate.safe_io import loads_json, read_text
from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.trace import MAX_EXPERTS, MAX_LAYERS, TraceMeta
from moeplace.errors import MoeplaceError, file_error

# a count is at most ~20 characters of JSON: the largest record MAX_LAYERS x MAX_EXPERTS allows
MAX_RECORD_BYTES = 1 << 30


def read_load(paths: Sequence[Path], options) -> Statistics:
    """Statistics of one workload per label: ``load`` ``[L, N]`` over the MoE layers, no co-activation."""
    labels = options.labels or tuple(path.stem for path in paths)
    if len(labels) != len(paths):
        raise MoeplaceError(f"--label names {len(labels)} workloads for {len(paths)} files: one label a file")
    counts = [_read_counts(path) for path in paths]
    rows, n = counts[0].shape
    for path, count in zip(paths[1:], counts[1:], strict=True):
        if count.shape != (rows, n):
            raise file_error(
                path,
                f"logical_count has {count.shape[0]} layers x {count.shape[1]} experts, "
                f"{paths[0]} {rows} x {n}: every workload must record the same model",
            )
    layout = options.layout
    if layout is not None and (rows, n) != (layout.num_hidden_layers, layout.num_experts):
        raise file_error(
            paths[0],
            f"logical_count has {rows} layers x {n} experts; the model config says "
            f"{layout.num_hidden_layers} hidden layers x {layout.num_experts} routed experts",
        )
    if options.num_experts is not None and options.num_experts != n:
        raise file_error(
            paths[0], f"logical_count counts {n} experts, --num-experts says {options.num_experts}"
        )
    top_k = layout.top_k if layout is not None else options.top_k
    if top_k is None:
        raise MoeplaceError("a load record does not say top-k: pass --top-k or --model-config")
    if top_k > n:
        raise MoeplaceError(f"top-k {top_k} exceeds the {n} experts the records count")
    moe_layers = _moe_layers(paths, counts, layout, options.layer_ids)
    groups = layout.group_limit if layout is not None else None
    meta = TraceMeta(
        model=options.model or "unknown (SGLang load record)",
        num_experts=n,
        top_k=top_k,
        layer_ids=tuple(int(x) for x in moe_layers),
        phase="mixed",
        source=f"SGLang logical_count (load): {', '.join(p.name for p in paths)}",
        note="expert load only, one workload per label: no per-token routing, so no co-activation",
        num_hidden_layers=rows,
        routing_groups=groups[0] if groups else None,
        groups_per_token=groups[1] if groups else None,
    )
    return workload_statistics(paths, labels, [count[moe_layers] for count in counts], meta)


def _read_counts(path: Path) -> np.ndarray:
    """int64 ``[rows, N]`` counts of one file; ``MoeplaceError`` naming it for anything else."""
    record = loads_json(read_text(path, MAX_RECORD_BYTES), f"{path.name}")
    if not isinstance(record, dict) or "logical_count" not in record:
        raise file_error(path, 'not an SGLang load record: needs {"logical_count": [[...], ...]}')
    try:
        count = np.asarray(record["logical_count"], dtype=np.float64)
    except (TypeError, ValueError):
        raise file_error(path, "logical_count must be a list of equal-length rows of numbers") from None
    if count.ndim != 2 or not 1 <= count.shape[0] <= MAX_LAYERS or not 1 <= count.shape[1] <= MAX_EXPERTS:
        raise file_error(
            path, f"logical_count must be [hidden layers, experts] (at most {MAX_LAYERS} x {MAX_EXPERTS})"
        )
    bad = ~np.isfinite(count) | (count < 0)
    if bad.any():
        layer, expert = np.argwhere(bad)[0]
        raise file_error(
            path,
            f"logical_count holds {count[layer, expert]} at layer {layer}, expert {expert}: "
            "counts are finite and >= 0",
        )
    fractional = count != np.rint(count)
    if fractional.any() or count.max(initial=0) >= 2.0**62:
        layer, expert = np.argwhere(fractional)[0] if fractional.any() else np.argwhere(count >= 2.0**62)[0]
        raise file_error(
            path,
            f"logical_count holds {count[layer, expert]} at layer {layer}, expert {expert}: it counts "
            "routed tokens, whole numbers below 2^62",
        )
    return count.astype(np.int64)


def _moe_layers(paths, counts, layout, layer_ids) -> np.ndarray:
    """The MoE layers' rows: the model config's (dense layers must count nothing), ``--layer-ids``,
    or the rows any file counts load in."""
    rows = counts[0].shape[0]
    if layout is not None or layer_ids is not None:
        moe = np.asarray(layout.layer_ids if layout is not None else layer_ids, np.int64)
        if moe.max() >= rows:
            raise file_error(paths[0], f"MoE layer {moe.max()} is past the {rows} layers logical_count has")
        dense = np.setdiff1d(np.arange(rows), moe)
        for path, count in zip(paths, counts, strict=True):
            loaded = dense[count[dense].sum(axis=1) > 0]
            if loaded.size:
                raise file_error(
                    path,
                    f"layer {loaded[0]} is dense (not a MoE layer of the model), "
                    "but logical_count has load there",
                )
        return moe
    moe = np.flatnonzero(sum(count.sum(axis=1) > 0 for count in counts))
    if not moe.size:
        raise file_error(paths[0], "logical_count counts no expert selection")
    return moe

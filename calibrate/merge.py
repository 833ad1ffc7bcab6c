"""Merging traces recorded on several machines or GPUs (statistics merge by ``+``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from moeplace.calibrate.trace import Trace, TraceMeta
from moeplace.errors import MoeplaceError, file_error


def merged_meta(traces: Sequence[Trace], paths: Sequence[Path]) -> TraceMeta:
    """Metadata of the concatenation; ``MoeplaceError`` naming the first trace that differs."""
    seen: dict[str, Path] = {}
    for trace, path in zip(traces, paths, strict=True):
        fingerprint = trace.fingerprint()
        if fingerprint in seen:
            raise file_error(
                path, f"holds the same trace as {seen[fingerprint]}: its documents would be counted twice"
            )
        seen[fingerprint] = path
    first = traces[0].meta
    for trace, path in zip(traces[1:], paths[1:], strict=True):
        meta = trace.meta
        if (meta.model, meta.num_experts, meta.top_k, meta.layer_ids) != (
            first.model,
            first.num_experts,
            first.top_k,
            first.layer_ids,
        ):
            raise MoeplaceError(
                f"{path}: {meta.model} with {meta.num_experts} experts, top-{meta.top_k}, "
                f"MoE layers {list(meta.layer_ids)} does not match {paths[0]} ({first.model}, "
                f"{first.num_experts} experts, top-{first.top_k}, MoE layers {list(first.layer_ids)})"
            )
    phases = {trace.meta.phase for trace in traces}
    return dataclasses.replace(
        first,
        phase=phases.pop() if len(phases) == 1 else "mixed",
        source="merged: " + ", ".join(str(p) for p in paths),
    )


def trace_documents(trace: Trace) -> Iterator[tuple[np.ndarray, str]]:
    """Each document's ids ``[t, L, k]`` and label, read a chunk at a time."""
    offsets = trace.doc_offsets
    for first, end in trace.document_chunks():
        chunk = np.asarray(trace.topk_ids[offsets[first] : offsets[end]])
        for doc in range(first, end):
            yield (
                chunk[offsets[doc] - offsets[first] : offsets[doc + 1] - offsets[first]],
                str(trace.doc_labels[doc]),
            )

"""Importers: routing recorded by serving engines, turned into moeplace traces or statistics.

Each importer takes the source files and ``ImportOptions`` and returns either
``(TraceMeta, documents)`` (documents: iterable of ``(ids [t, L, k], label)``) or ``Statistics``
when the source holds expert load only. Adding a format: one module, one line in ``IMPORTERS``.
"""

from __future__ import annotations

import dataclasses

from moeplace.calibrate.importers import npz, sglang, sglang_load, trtllm, vllm
from moeplace.calibrate.model_config import MoeLayout


@dataclasses.dataclass(frozen=True)
class ImportOptions:
    """What a source may not say about itself: the model's name, expert count, top-k, layer ids,
    the model's MoE layout (from its ``config.json``), and for SGLang stat dumps ``counted_by``,
    how many ranks counted each token (without an all-to-all MoE backend, each TP rank does); for
    load records, ``labels``: the workload of each source file or directory (None: the file stems,
    the directory names); for TensorRT-LLM expert statistics, ``iterations``: ``(A, B)`` keeps the
    iterations A <= iter < B (None: all recorded)."""

    model: str | None = None
    num_experts: int | None = None
    top_k: int | None = None
    layer_ids: tuple[int, ...] | None = None
    counted_by: int = 1
    layout: MoeLayout | None = None
    labels: tuple[str, ...] | None = None
    iterations: tuple[int, int] | None = None


IMPORTERS = {
    "sglang": sglang.read_per_token,
    "sglang-stat": sglang.read_stat,
    "sglang-load": sglang_load.read_load,
    "trtllm-stat": trtllm.read_stat,
    "vllm": vllm.read_routed_experts,
    "npz": npz.read_interchange,
}

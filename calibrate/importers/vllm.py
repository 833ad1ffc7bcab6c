"""vLLM routed experts (``--enable-return-routed-experts``), from a JSONL of request outputs.

Each line is one request, one document: a JSON object with ``routed_experts`` ``[tokens,
moe_layers, top_k]`` at the top level (an offline ``CompletionOutput`` written out) or in
``choices[i]`` / ``outputs[i]`` (a server response), as nested lists or as a base64 ``.npy``
string (the server's encoding; decoded with ``allow_pickle=False``). A response-level
``prompt_routed_experts`` (vLLM versions that split prompt and generated routing) goes first.
Extra choices of one request become documents of their own. vLLM does not say how many experts
the model has: pass ``--num-experts``; ``--layer-ids`` gives the model's index of each MoE layer.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moeplace.calibrate.trace import TraceMeta
from moeplace.errors import MoeplaceError, file_error


def read_routed_experts(paths: Sequence[Path], options) -> tuple[TraceMeta, list[tuple[np.ndarray, str]]]:
    if options.num_experts is None:
        raise MoeplaceError("vLLM routed experts do not record the expert count: pass --num-experts")
    documents, origins, model = [], [], None  # origins[i]: (path, line) of documents[i]
    for path in paths:
        if not path.is_file():
            raise file_error(path, "no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise file_error(path, f"unreadable ({exc})") from None
        if not text.strip():
            raise file_error(path, "empty: no requests")
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise file_error(path, f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise file_error(path, f"{where}: not a JSON object")
            model = model or record.get("model")
            label = str(record.get("domain", record.get("label", path.stem)))
            prompt = _decode(record.get("prompt_routed_experts"), path, where)
            choices = [
                c for c in (record.get("choices") or record.get("outputs") or [record]) if isinstance(c, dict)
            ]
            routed = [_decode(c.get("routed_experts"), path, where) for c in choices]
            pieces = [p for p in [prompt, *routed] if p is not None]
            if not pieces:
                raise file_error(path, f"{where}: no routed_experts or prompt_routed_experts")
            first = [x for x in (prompt, routed[0] if routed else None) if x is not None]
            documents.append((np.concatenate(first), label))
            documents.extend((r, f"{label}/choice{i}") for i, r in enumerate(routed[1:], 1) if r is not None)
            origins.extend([(path, where)] * (len(documents) - len(origins)))
    num_layers, top_k = documents[0][0].shape[1:]
    for (ids, _), (path, where) in zip(documents, origins, strict=True):
        if ids.shape[1:] != (num_layers, top_k):
            raise file_error(
                path,
                f"{where}: routed experts of [moe_layers, top_k] {list(ids.shape[1:])}, earlier requests "
                f"{[num_layers, top_k]}",
            )
    layer_ids = options.layer_ids or tuple(range(num_layers))
    if len(layer_ids) != num_layers:
        raise MoeplaceError(
            f"--layer-ids names {len(layer_ids)} layers, the data has {num_layers} MoE layers"
        )
    meta = TraceMeta(
        model=options.model or model or "unknown (vLLM routed experts)",
        num_experts=options.num_experts,
        top_k=top_k,
        layer_ids=tuple(layer_ids),
        phase="mixed",
        source=f"vLLM routed experts: {', '.join(p.name for p in paths)}",
    )
    return meta, documents


def _decode(value, path: Path, where: str) -> np.ndarray | None:
    """``[tokens, layers, k]`` ids from nested lists or a base64 ``.npy``; None if absent."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            array = np.load(io.BytesIO(base64.b64decode(value, validate=True)), allow_pickle=False)
        else:
            array = np.asarray(value)
    except (binascii.Error, ValueError, OSError) as exc:
        raise file_error(path, f"{where}: routed experts not decodable ({exc})") from None
    if array.ndim != 3 or array.dtype.kind not in "iu":
        raise file_error(
            path, f"{where}: routed experts must be integer [tokens, layers, top_k], got {array.shape}"
        )
    return array.astype(np.int64)

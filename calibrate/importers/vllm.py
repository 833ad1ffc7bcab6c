"""vLLM routed experts (``--enable-return-routed-experts``), from a JSONL of request outputs.

Each line is one request, one document: a JSON object with ``routed_experts`` at the top level (an
offline ``CompletionOutput`` written out) or in ``choices[i]`` / ``outputs[i]`` (a server
response). Two layouts, read from vLLM 0.21.0, 0.27.1 and 0.33.0 and checked against their code:

- vLLM 0.27 and later: per choice a base64 ``.npy`` (uint8, or uint16 past 256 experts) of
  ``[prompt + generated - 1, num_hidden_layers, k]``, indexed by the model's layer, dense layers'
  rows all zero. The last generated token has no row.
- vLLM 0.21: a response-level ``prompt_routed_experts`` and per choice ``routed_experts`` (the
  generated tokens but the last), nested lists indexed by MoE-layer ordinal, sized by a layer
  count that for DeepSeek models counts the dense layers too (the extra rows are zero).

The MoE layers come from ``--model-config`` (the model's ``config.json``) or ``--layer-ids``; each
document's layout from its encoding (a base64 string is 0.27+, ``prompt_routed_experts`` 0.21)
or, for nested lists alone, from which layer rows are empty. Rows that carry no routing where the
model routes (a dense row in an MoE layer; in 0.21, tokens served from the prefix cache) are
refused: the trace would not be the traffic. Extra choices of one request become documents of their
own. Decoded with ``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moeplace.calibrate.corpus import json_lines
from moeplace.calibrate.safe_io import load_npy_bytes
from moeplace.calibrate.trace import TraceMeta, check_ids
from moeplace.errors import MoeplaceError, file_error, raw_message


@dataclasses.dataclass(frozen=True)
class _Routed:
    """One document as recorded: ``ids`` int64 ``[T, recorded layers, k]``; ``layout`` "model"
    (indexed by model layer), "ordinal" (by MoE ordinal) or None (nested lists: not yet known)."""

    ids: np.ndarray
    layout: str | None
    label: str
    where: tuple[Path, str]


def read_routed_experts(paths: Sequence[Path], options) -> tuple[TraceMeta, list[tuple[np.ndarray, str]]]:
    layout = options.layout
    num_experts = options.num_experts or (layout.num_experts if layout else None)
    if num_experts is None:
        raise MoeplaceError(
            "vLLM routed experts do not record the expert count: pass --num-experts or --model-config"
        )
    routed, model = [], None
    for path in paths:
        for where, record in _records(path):
            model = model or record.get("model")
            routed.extend(_documents(record, path, where))
    width, top_k = routed[0].ids.shape[1:]
    for doc in routed:
        if doc.ids.shape[1:] != (width, top_k):
            raise file_error(
                doc.where[0],
                f"{doc.where[1]}: routed experts of [layers, top_k] {list(doc.ids.shape[1:])}, earlier "
                f"requests {[width, top_k]}",
            )
    layer_ids = options.layer_ids or (layout.layer_ids if layout else tuple(range(width)))
    documents = [(_moe_rows(doc, layer_ids, num_experts), doc.label) for doc in routed]
    groups, per_token = (layout.group_limit if layout else None) or (None, None)
    meta = TraceMeta(
        model=options.model or model or "unknown (vLLM routed experts)",
        num_experts=num_experts,
        top_k=top_k,
        layer_ids=tuple(layer_ids),
        phase="mixed",
        source=f"vLLM routed experts: {', '.join(p.name for p in paths)}",
        num_hidden_layers=layout.num_hidden_layers if layout else None,
        routing_groups=groups,
        groups_per_token=per_token,
    )
    return meta, documents


def _records(path: Path):
    """``(line label, JSON object)`` of each non-blank line of a JSONL file."""
    if not path.is_file():
        raise file_error(path, "no such file")
    try:
        records = [(f"line {number}", record) for number, record in json_lines(path)]
    except (OSError, UnicodeDecodeError) as exc:
        raise file_error(path, f"unreadable ({exc})") from None
    if not records:
        raise file_error(path, "empty: no requests")
    return records


def _documents(record: dict, path: Path, where: str) -> list[_Routed]:
    """The request's prompt and first choice as one document, further choices as their own."""
    label = str(record.get("domain", record.get("label", path.stem)))
    prompt = _decode(record.get("prompt_routed_experts"), path, where)
    choices = [c for c in (record.get("choices") or record.get("outputs") or [record]) if isinstance(c, dict)]
    values = [c.get("routed_experts") for c in choices]
    routed = [_decode(value, path, where) for value in values]
    if prompt is None and all(r is None for r in routed):
        raise file_error(path, f"{where}: no routed_experts or prompt_routed_experts")
    if prompt is not None:
        layout = "ordinal"  # only vLLM 0.21 splits off the prompt's routing
    elif any(isinstance(value, str) for value in values):
        layout = "model"  # the base64 .npy of vLLM 0.27 and later
    else:
        layout = None
    first = [x for x in (prompt, routed[0] if routed else None) if x is not None]
    documents = [_Routed(np.concatenate(first), layout, label, (path, where))]
    for i, extra in enumerate(routed[1:], 1):
        if extra is not None:
            documents.append(_Routed(extra, layout, f"{label}/choice{i}", (path, where)))
    return documents


def _moe_rows(doc: _Routed, layer_ids: tuple[int, ...], num_experts: int) -> np.ndarray:
    """int64 ``[T, len(layer_ids), k]``: the rows of the MoE layers, by the document's layout."""
    ids, (path, where) = doc.ids, doc.where
    width = ids.shape[1]
    empty = ~(ids != 0).any(axis=(0, 2))  # [width] recorded layer rows holding no routing at all
    fits = {
        "model": width > max(layer_ids) and empty[np.setdiff1d(np.arange(width), layer_ids)].all(),
        "ordinal": width >= len(layer_ids) and empty[len(layer_ids) :].all(),
    }
    layouts = [doc.layout] if doc.layout else [name for name, ok in fits.items() if ok]
    columns = {"model": np.array(layer_ids), "ordinal": np.arange(len(layer_ids))}
    if (doc.layout and not fits[doc.layout]) or not layouts:
        raise file_error(
            path,
            f"{where}: routed experts over {width} layers do not fit MoE layers {_span(layer_ids)}: neither "
            "indexed by model layer with dense layers' rows empty (vLLM 0.27+) nor by MoE ordinal (vLLM "
            "0.21); pass the model's --model-config or --layer-ids",
        )
    if len({tuple(columns[name]) for name in layouts}) > 1:
        raise file_error(
            path,
            f"{where}: routed experts over {width} layers fit MoE layers {_span(layer_ids)} both by model "
            "layer and by MoE ordinal; pass the model's --model-config or --layer-ids",
        )
    rows = ids[:, columns[layouts[0]]]
    if rows.max(initial=0) >= num_experts:
        raise file_error(path, f"{where}: expert id {int(rows.max())} >= --num-experts {num_experts}")
    if rows.shape[2] > 1:  # k distinct experts are never all expert 0: an all-zero row is no routing
        unrouted = ~(rows != 0).any(axis=2)  # [T, MoE layers]
        if rows.shape[0] and unrouted.all(axis=0).any():
            layer = layer_ids[int(np.argmax(unrouted.all(axis=0)))]
            raise file_error(
                path,
                f"{where}: layer {layer} holds no routing for any token: a dense layer? pass the model's "
                "--model-config or --layer-ids",
            )
        if unrouted.any():
            token, layer = np.argwhere(unrouted)[0]
            count = int(unrouted.any(axis=1).sum())
            raise file_error(
                path,
                f"{where}: {count} of {rows.shape[0]} tokens have no routing at MoE layer "
                f"{layer_ids[layer]} (first: token {token}); vLLM 0.21 leaves prefix-cache hits empty: "
                "record with prefix caching off",
            )
    try:  # here, where the file and the request are known
        check_ids(rows, num_experts)
    except MoeplaceError as exc:
        raise file_error(path, f"{where}: {raw_message(exc)}") from None
    return rows


def _span(layer_ids) -> str:
    contiguous = list(layer_ids) == list(range(layer_ids[0], layer_ids[-1] + 1))
    return f"{layer_ids[0]}-{layer_ids[-1]}" if contiguous else str(list(layer_ids))


def _decode(value, path: Path, where: str) -> np.ndarray | None:
    """``[tokens, layers, k]`` ids from nested lists or a base64 ``.npy``; None if absent."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            array = load_npy_bytes(base64.b64decode(value, validate=True), f"{where}: routed experts")
        else:
            array = np.asarray(value)
    except (binascii.Error, ValueError, OSError) as exc:
        raise file_error(path, f"{where}: routed experts not decodable ({exc})") from None
    except MoeplaceError as exc:
        raise file_error(path, exc) from None
    if array.ndim != 3 or array.dtype.kind not in "iu":
        raise file_error(
            path, f"{where}: routed experts must be integer [tokens, layers, top_k], got {array.shape}"
        )
    if array.size and array.min() < 0:
        raise file_error(path, f"{where}: negative expert id {int(array.min())}")
    return array.astype(np.int64)

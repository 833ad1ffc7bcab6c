"""SGLang's expert distribution recorder dumps (``--expert-distribution-recorder-mode``).

``per_token``: one ``.pt`` per rank, ``{"records": [...], "last_physical_to_logical_map": int
[num_hidden_layers, num_physical]}``; a record per forward pass with ``forward_pass_id``, ``rank``,
``input_ids`` and ``positions`` (the unpadded batch of the rank's attention group), ``extend_seq_lens``
(prefill) and ``topk_ids_of_layer`` int32 ``[num_hidden_layers, len(input_ids), 8]``: physical slots,
-1 unused, written for the rows this rank's MoE layer routed. Which rows those are depends on the
launch (read from SGLang 0.5.2 and 0.5.23 and checked by running their recorder):

- TP attention, no all-to-all MoE backend: every rank routes the whole batch (identical records).
- TP attention with an all-to-all backend (``--moe-a2a-backend deepep`` ...): the batch is padded to
  a multiple of the attention-TP size S and ``tensor_split`` into S contiguous slices; rank r routes
  slice r, written from row 0 of its record (rows past its real tokens: -1, or in 0.5.2's eager
  mode the routing of padding). Every record still carries the whole batch's ``input_ids``.
- DP attention with an all-to-all backend: each attention group (its own requests) as above.

So per forward pass, records with the same ``input_ids`` and ``positions`` form one attention group;
sorted by rank, each record's leading written rows are that rank's slice, and the slices laid end to
end, capped at the batch length, are the batch's routing in all three cases. A pass whose records
cover fewer tokens than the batch (a rank's dump missing) is refused. DP attention without an
all-to-all backend cannot be reconstructed (every rank's record holds the first rows of the
gathered batch, DP group 0's tokens): detected as different batches recording the same experts,
and refused. Physical slots map to logical experts through the map; the map is the last one, so
record with EPLB rebalancing off. A prefill record splits into one document per request
(``extend_seq_lens``); records carry no request ids, so a decode pass is one document.

``stat``: one ``.pt`` from rank 0, ``{"logical_count": [steps, num_hidden_layers, N], ...}``
already summed over all ranks: expert load only, imported as load-only statistics. Without an
all-to-all backend every rank counted every token (``--tp-size`` says how many ranks).
Source: sgl-project/sglang ``python/sglang/srt/eplb/expert_distribution.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moeplace.calibrate.importers.torch_files import load_pt
from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.trace import MAX_EXPERTS, MAX_LAYERS, TraceMeta
from moeplace.errors import MoeplaceError, file_error

# Identical expert choices shared by two different batches of one pass that mark DP attention
# without an all-to-all backend; real batches agree on this many only by accident.
SAME_ROUTING_MIN_CHOICES = 32


@dataclasses.dataclass(frozen=True)
class _Record:
    """One rank's record of one forward pass. ``topk``: int64 ``[layers, tokens, 8]`` physical."""

    path: Path
    index: int
    forward_pass_id: int
    rank: int
    input_ids: np.ndarray
    positions: np.ndarray
    extend_seq_lens: tuple[int, ...]
    topk: np.ndarray

    @property
    def batch_key(self) -> tuple:
        return self.forward_pass_id, self.input_ids.tobytes(), self.positions.tobytes()


def read_per_token(paths: Sequence[Path], options) -> tuple[TraceMeta, list[tuple[np.ndarray, str]]]:
    to_logical, records = None, []
    for path in paths:
        dump = load_pt(path)
        if not isinstance(dump, dict) or "records" not in dump or "last_physical_to_logical_map" not in dump:
            raise file_error(
                path, "not an SGLang per_token dump (needs 'records' and 'last_physical_to_logical_map')"
            )
        this_map = _read_map(dump["last_physical_to_logical_map"], path, options.num_experts)
        if to_logical is None:
            to_logical, map_path = this_map, path
        elif this_map.shape != to_logical.shape or np.any(this_map != to_logical):
            raise file_error(
                path,
                f"last_physical_to_logical_map differs from {map_path.name}'s: dumps of different runs, "
                "or EPLB rebalanced between them",
            )
        if not isinstance(dump["records"], list):
            raise file_error(path, "'records' is not a list")
        for index, record in enumerate(dump["records"]):
            records.append(_read_record(record, index, path, to_logical.shape))
    groups = _attention_groups(records)
    stitched = [_stitch(group) for group in groups]
    _refuse_gathered_dp(groups, stitched)
    if not any(ids.shape[1] for ids in stitched):
        raise MoeplaceError(f"no tokens in {', '.join(map(str, paths))}")
    every = np.concatenate([ids for ids in stitched if ids.shape[1]], axis=1)  # [layers, T, 8]
    moe_layers = np.flatnonzero((every >= 0).any(axis=(1, 2)))
    if not moe_layers.size:
        raise MoeplaceError("the dumps record no expert selections")
    columns = np.flatnonzero((every[moe_layers] >= 0).any(axis=(0, 1)))
    num_experts = int(to_logical.max()) + 1 if options.num_experts is None else options.num_experts
    if columns.size > num_experts:
        raise file_error(
            map_path,
            f"tokens select {columns.size} experts each, but last_physical_to_logical_map names only "
            f"{num_experts}: an inconsistent map (or pass --num-experts)",
        )
    documents = []
    for group, ids in zip(groups, stitched, strict=True):
        documents += _documents(group[0], ids[moe_layers][:, :, columns], moe_layers, to_logical)
    decode = any(label.endswith("/decode") for _, label in documents)
    meta = TraceMeta(
        model=options.model or "unknown (SGLang dump)",
        num_experts=num_experts,
        top_k=int(columns.size),
        layer_ids=tuple(int(x) for x in moe_layers),
        phase="mixed" if decode else "prefill",
        source=f"SGLang expert distribution recorder (per_token): {', '.join(p.name for p in paths)}",
        note="physical ids mapped to logical through the dumps' last_physical_to_logical_map; the ranks' "
        "slices of each batch stitched in rank order",
        num_hidden_layers=int(to_logical.shape[0]),
    )
    return meta, documents


def _documents(first: _Record, ids: np.ndarray, moe_layers: np.ndarray, to_logical: np.ndarray) -> list:
    """``(logical ids [t, MoE layers, k], label)`` of one batch: a document per request of a prefill
    (``extend_seq_lens``), one for a decode pass. ``ids``: physical ``[MoE layers, T, k]``."""
    unrouted = (ids < 0).all(axis=2)  # [MoE layers, T]
    if unrouted.any():
        layer, token = np.argwhere(unrouted)[0]
        raise file_error(
            first.path,
            f"forward pass {first.forward_pass_id}: no rank recorded experts for token {token} of the "
            f"batch at layer {moe_layers[layer]}; pass every rank's dump",
        )
    table = to_logical[moe_layers]  # [MoE layers, P]
    logical = np.where(ids >= 0, table[np.arange(moe_layers.size)[:, None, None], np.maximum(ids, 0)], -1)
    logical = logical.transpose(1, 0, 2)  # [T, MoE layers, k]
    name = f"{first.path.stem}/pass{first.forward_pass_id}"
    lengths = first.extend_seq_lens
    if lengths:  # they add up to the batch (checked on reading)
        bounds = itertools.pairwise(np.cumsum([0, *lengths]))
        return [(logical[lo:hi], f"{name}/request{i}") for i, (lo, hi) in enumerate(bounds)]
    return [(logical, f"{name}/decode")] if logical.shape[0] else []


def _read_map(value, path: Path, num_experts: int | None) -> np.ndarray:
    """int64 ``[num_hidden_layers, P]`` physical -> logical map, checked: every logical expert has a
    slot in every row (SGLang gives dense layers the trivial ``p % N`` row)."""
    to_logical = _as_array(value, path, "last_physical_to_logical_map")
    if to_logical.ndim != 2 or to_logical.min(initial=0) < 0 or to_logical.max(initial=0) >= MAX_EXPERTS:
        raise file_error(
            path,
            f"last_physical_to_logical_map must be [layers, slots] of ids in 0..{MAX_EXPERTS - 1}",
        )
    if not 1 <= to_logical.shape[0] <= MAX_LAYERS:
        raise file_error(path, f"last_physical_to_logical_map has {to_logical.shape[0]} layers")
    if num_experts is not None and to_logical.max(initial=0) >= num_experts:
        raise file_error(
            path,
            f"the physical->logical map names expert {int(to_logical.max())}; --num-experts is {num_experts}",
        )
    num_experts = num_experts or int(to_logical.max(initial=0)) + 1
    present = np.zeros((to_logical.shape[0], num_experts), bool)
    present[np.arange(to_logical.shape[0])[:, None], to_logical] = True
    if not present.all():
        layer, expert = np.argwhere(~present)[0]
        raise file_error(
            path,
            f"last_physical_to_logical_map is inconsistent: layer {layer} gives logical expert {expert} "
            "no physical slot",
        )
    return to_logical


def _read_record(record, index: int, path: Path, map_shape: tuple[int, int]) -> _Record:
    where = f"record {index}"
    if not isinstance(record, dict):
        raise file_error(path, f"{where} is not a dict")
    topk = _as_array(record.get("topk_ids_of_layer"), path, f"{where}: topk_ids_of_layer")
    input_ids = _as_array(record.get("input_ids", []), path, f"{where}: input_ids").reshape(-1)
    positions = _as_array(record.get("positions", []), path, f"{where}: positions").reshape(-1)
    if topk.ndim != 3 or topk.shape[0] != map_shape[0] or topk.shape[1] != input_ids.shape[0]:
        raise file_error(
            path,
            f"{where}: topk_ids_of_layer {topk.shape} does not match {map_shape[0]} layers x "
            f"{input_ids.shape[0]} tokens",
        )
    if topk.max(initial=-1) >= map_shape[1] or topk.min(initial=-1) < -1:
        raise file_error(path, f"{where}: physical expert id outside the map's {map_shape[1]} slots")
    lengths = record.get("extend_seq_lens")
    lengths = _as_array([] if lengths is None else lengths, path, f"{where}: extend_seq_lens")
    tokens = input_ids.shape[0]
    # a request in an extend pass extends by one token at least
    if lengths.ndim > 1 or np.any(lengths < 1) or (lengths.size and lengths.sum() != tokens):
        raise file_error(
            path, f"{where}: extend_seq_lens must be lengths >= 1 adding up to its {tokens} tokens"
        )
    number, rank = record.get("forward_pass_id", -1), record.get("rank", 0)
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (number, rank)):
        raise file_error(path, f"{where}: forward_pass_id and rank must be integers")
    lengths, forward_pass_id, rank = tuple(int(x) for x in lengths), int(number), int(rank)
    if rank < 0:
        raise file_error(path, f"{where}: rank {rank} is negative")
    return _Record(path, index, forward_pass_id, rank, input_ids, positions, lengths, topk)


def _attention_groups(records: list[_Record]) -> list[list[_Record]]:
    """Records of one forward pass and one batch (same input ids and positions), in rank order;
    groups ordered by pass, then by their lowest rank."""
    groups: dict[tuple, list[_Record]] = {}
    for record in records:
        groups.setdefault(record.batch_key, []).append(record)
    ordered = [_one_per_rank(sorted(group, key=lambda r: r.rank)) for group in groups.values()]
    return sorted(ordered, key=lambda group: (group[0].forward_pass_id, group[0].rank))


def _one_per_rank(group: list[_Record]) -> list[_Record]:
    """A batch's records with one per rank: several records of one rank come from several files and
    are identical (SGLang 0.5.23 numbers every rank 0 when the MoE is not expert-parallel, and those
    ranks record alike); one file never holds a batch twice."""
    kept = [group[0]]
    for record in group[1:]:
        if record.rank != kept[-1].rank:
            kept.append(record)
        elif record.path == kept[-1].path:
            raise file_error(
                record.path,
                f"record {record.index} repeats record {kept[-1].index}: forward pass "
                f"{record.forward_pass_id}, rank {record.rank}, the same batch",
            )
        elif not np.array_equal(record.topk, kept[-1].topk):
            raise file_error(
                record.path,
                f"forward pass {record.forward_pass_id}: two different records of rank {record.rank} for one "
                f"batch ({kept[-1].path.name} has the other)",
            )
    return kept


def _stitch(group: list[_Record]) -> np.ndarray:
    """int64 ``[layers, T, 8]``: per layer, each rank's leading written rows end to end, capped at
    the batch's T tokens; layers no rank routed (dense) stay -1. Refuses a batch whose ranks cover
    fewer than T tokens of a layer some rank routed."""
    first = group[0]
    layers, tokens, width = first.topk.shape
    out = np.full((layers, tokens, width), -1, np.int64)
    if not tokens:  # an idle rank's pass
        return out
    taken = np.zeros(layers, np.int64)
    for record in group:
        written = (record.topk >= 0).any(axis=2)  # [layers, T]; a rank's rows are a prefix
        count = np.where(written.any(axis=1), tokens - np.argmax(written[:, ::-1], axis=1), 0)
        count = np.minimum(count, tokens - taken)
        for layer in np.flatnonzero(count):
            out[layer, taken[layer] : taken[layer] + count[layer]] = record.topk[layer, : count[layer]]
        taken += count
    routed = taken > 0
    if np.any(taken[routed] < tokens):
        layer = int(np.argmax(routed & (taken < tokens)))
        ranks = sorted({record.rank for record in group})
        raise file_error(
            first.path,
            f"forward pass {first.forward_pass_id}: the records of ranks {ranks} cover "
            f"{int(taken[layer])} of the batch's {tokens} tokens at layer {layer}; with an all-to-all MoE "
            "backend each rank records only its slice of the batch: pass every rank's dump",
        )
    return out


def _refuse_gathered_dp(groups: list[list[_Record]], stitched: list[np.ndarray]) -> None:
    """Refuse dumps where two different batches of one forward pass recorded the same experts:
    DP attention without an all-to-all backend, where SGLang's recorder keeps the first rows of the
    gathered batch (DP group 0's tokens) on every rank."""
    by_pass: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        by_pass.setdefault(group[0].forward_pass_id, []).append(index)
    for members in by_pass.values():
        for a, b in itertools.combinations(members, 2):
            rows = min(stitched[a].shape[1], stitched[b].shape[1])
            first, second = stitched[a][:, :rows], stitched[b][:, :rows]
            if np.count_nonzero(first >= 0) >= SAME_ROUTING_MIN_CHOICES and np.array_equal(first, second):
                raise file_error(
                    groups[b][0].path,
                    f"forward pass {groups[b][0].forward_pass_id}: batches of different requests recorded "
                    "the same experts; SGLang under DP attention without an all-to-all MoE backend records "
                    "DP group 0's routing on every rank, which cannot be undone (record with "
                    "--moe-a2a-backend, or without --enable-dp-attention)",
                )


def read_stat(paths: Sequence[Path], options) -> Statistics:
    counts = None
    for path in paths:
        dump = load_pt(path)
        if not isinstance(dump, dict) or "logical_count" not in dump:
            raise file_error(path, "not an SGLang stat dump (needs 'logical_count')")
        count = _as_array(dump["logical_count"], path, "logical_count")
        count = count.sum(axis=0) if count.ndim == 3 else count
        if count.ndim != 2 or count.min(initial=0) < 0 or not count.shape[0] <= MAX_LAYERS:
            raise file_error(path, "logical_count must be non-negative [steps, layers, experts] counts")
        if not 1 <= count.shape[1] <= MAX_EXPERTS:
            raise file_error(path, f"logical_count counts {count.shape[1]} experts")
        if counts is not None and counts.shape != count.shape:
            raise file_error(
                path, f"logical_count has {count.shape} layers x experts, another file {counts.shape}"
            )
        counts = count if counts is None else counts + count
    names = ", ".join(p.name for p in paths)
    if options.top_k is None:
        raise MoeplaceError("an SGLang stat dump does not record top-k: pass --top-k")
    if options.num_experts is not None and options.num_experts != counts.shape[1]:
        raise MoeplaceError(
            f"--num-experts {options.num_experts}, but {names} count {counts.shape[1]} experts"
        )
    if options.top_k > counts.shape[1]:
        raise MoeplaceError(f"--top-k {options.top_k} exceeds the {counts.shape[1]} experts {names} count")
    if options.counted_by > 1:  # no all-to-all backend: every rank counted every token it routed
        if np.any(counts % options.counted_by):
            raise MoeplaceError(
                f"expert counts are not multiples of --tp-size {options.counted_by}: without an all-to-all "
                "backend every rank counts every token, so they would be; was the server launched with "
                "--moe-a2a-backend (then pass it too), or another TP size?"
            )
        counts = counts // options.counted_by
    moe_layers = np.flatnonzero(counts.sum(axis=1) > 0)
    if not moe_layers.size:
        raise MoeplaceError(f"{names}: the stat dumps count no expert selections")
    load = counts[moe_layers].astype(np.int64)
    num_experts = options.num_experts or load.shape[1]
    meta = TraceMeta(
        model=options.model or "unknown (SGLang dump)",
        num_experts=num_experts,
        top_k=options.top_k,
        layer_ids=tuple(int(x) for x in moe_layers),
        phase="mixed",
        source=f"SGLang expert distribution recorder (stat): {', '.join(p.name for p in paths)}",
        note="expert load only: no per-token routing, so no co-activation",
        num_hidden_layers=int(counts.shape[0]),
    )
    tokens = int(-(-load.sum(axis=1).max() // options.top_k))  # the busiest layer: k per token
    return Statistics(meta, load, None, np.zeros((len(moe_layers), 0, num_experts), np.int64), tokens, 0, 0)


def _as_array(value, path: Path, what: str) -> np.ndarray:
    """int64 copy of a tensor, array or nested list, refusing tensors that claim more elements than
    they store (a broadcast view of a tiny storage would otherwise be copied at its full size)."""
    if hasattr(value, "untyped_storage"):
        stored = value.untyped_storage().nbytes() // max(value.element_size(), 1)
        if value.numel() > stored:
            raise file_error(path, f"{what} claims {tuple(value.shape)} but stores {stored} values")
    try:
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    except (TypeError, ValueError, RuntimeError):
        raise file_error(path, f"{what} is not an array") from None
    if array.size and array.dtype.kind not in "iu":
        raise file_error(path, f"{what} must hold integers, has {array.dtype}")
    return array.astype(np.int64)

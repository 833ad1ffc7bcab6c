"""The serving step: a trace replayed as expert-parallel forward steps, and what each rank pays.

Every EP rank is also a data-parallel attention rank: it holds its own requests and routes its own
tokens. A step is one forward pass of every rank at once; at each MoE layer each token's hidden
state goes to the ranks holding its experts under the kernel's sending rule, each rank computes the
token-expert pairs that land on it, and the collective lasts as long as its busiest rank. So per
step and layer this counts, for every rank, tokens sent and received over each link class and the
pairs it computes, and reports the maximum over ranks (the straggler, what is paid) beside the mean
(what a perfect balance would pay).

Workloads (``Workload``):
- prefill: requests are dealt to ranks as they arrive, each to the rank with the fewest tokens
  queued; each step a rank runs the next ``tokens_per_rank`` tokens of its queue (chunked prefill).
- decode: continuous batching; each rank serves ``requests_per_rank`` live requests, one token of
  each per step; a finished request's slot takes the next request in arrival order, on whichever
  slot frees first.

Sending rules (``KERNELS``), after DeepEP's kernels:
- ``rank``: a token goes once to every distinct remote rank holding one of its experts (DeepEP's
  normal kernels within a node; NVLink).
- ``node``: across nodes once per distinct remote node over RDMA, to the rank of the same local
  index there, which forwards it over NVLink to the other ranks of its node that need it; ranks of
  its own node over NVLink directly (DeepEP's normal internode kernels).
- ``expert``: one message per remote (token, expert) pair, no deduplication (DeepEP's low-latency
  kernels); over RDMA across nodes, NVLink within one.
A rank's own experts cost no traffic. Combine sends the same messages back.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
from typing import Literal

import numpy as np

from moeplace.calibrate.trace import Trace, layer_chunks
from moeplace.errors import MoeplaceError
from moeplace.planner.dispatch import dispatch, replica_devices
from moeplace.planner.topology import Topology

KERNELS = ("rank", "node", "expert")
FIGURES = ("sent_nvlink", "sent_rdma", "received_nvlink", "received_rdma", "pairs", "experts")
STEP_TOKENS = 1 << 16  # tokens replayed at once: whole steps, so distinct experts per step are exact


@dataclasses.dataclass(frozen=True)
class Workload:
    """How held-out requests become steps: ``phase`` prefill (chunks of ``tokens_per_rank``
    consecutive tokens) or decode (``requests_per_rank`` live requests, one token each a step),
    and the kernel's sending rule."""

    phase: Literal["prefill", "decode"] = "prefill"
    tokens_per_rank: int = 1024
    requests_per_rank: int = 32
    kernel: Literal["rank", "node", "expert"] = "rank"

    def __post_init__(self):
        if self.phase not in ("prefill", "decode"):
            raise MoeplaceError(f"phase must be prefill or decode, got {self.phase!r}")
        if self.kernel not in KERNELS:
            raise MoeplaceError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.tokens_per_rank < 1 or self.requests_per_rank < 1:
            raise MoeplaceError("tokens per rank and requests per rank must be at least 1")

    @property
    def batch(self) -> int:
        """Tokens a rank runs in a full step."""
        return self.tokens_per_rank if self.phase == "prefill" else self.requests_per_rank

    @property
    def batch_text(self) -> str:
        unit = "tokens" if self.phase == "prefill" else "live requests"
        return f"{self.batch} {unit} a rank"


@dataclasses.dataclass(frozen=True)
class StepCost:
    """Per MoE layer, figures per step averaged over steps, in tokens (pairs for ``pairs``).

    ``straggler[figure]``: float ``[L]``, the busiest rank's count per step; ``mean[figure]``:
    float ``[L]``, the mean rank's. ``steps``: steps counted, those in which every rank runs a full
    batch (all ``replayed`` steps when none does); ``batch``: tokens a rank runs in a counted step,
    on average (to read the figures per token of a batch). For the rest of a step, which no
    placement changes (``attention_context``): ``context``, tokens a token attends to; ``logits``,
    tokens of a batch that produce logits; ``kv_reads``, tokens of KV cache a token reads.
    """

    straggler: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    steps: int
    batch: float
    replayed: int = 0
    context: float = 0.0
    logits: float = 0.0
    kv_reads: float = 0.0

    @classmethod
    def from_counts(
        cls,
        counts: dict[str, np.ndarray],
        counted: np.ndarray,
        batch: float,
        replayed: int,
        context: float = 0.0,
        logits: float = 0.0,
        kv_reads: float = 0.0,
    ) -> StepCost:
        """From per-step counts, float ``[L, S, D]`` per figure, over the ``counted`` steps
        (bool ``[S]``)."""
        return cls(
            straggler={figure: c[:, counted].max(axis=2).mean(axis=1) for figure, c in counts.items()},
            mean={figure: c[:, counted].mean(axis=2).mean(axis=1) for figure, c in counts.items()},
            steps=int(counted.sum()),
            batch=batch,
            replayed=replayed,
            context=context,
            logits=logits,
            kv_reads=kv_reads,
        )

    def traffic(self) -> TrafficFigures:
        """Means over layers, per token of a rank's batch: received (both links), pairs."""
        received = self.straggler["received_nvlink"] + self.straggler["received_rdma"]
        received_mean = self.mean["received_nvlink"] + self.mean["received_rdma"]
        return TrafficFigures(
            steps=self.steps,
            replayed_steps=self.replayed,
            received_straggler=float(received.mean() / self.batch),
            received_mean=float(received_mean.mean() / self.batch),
            rdma_received_straggler=float(self.straggler["received_rdma"].mean() / self.batch),
            pairs_straggler=float(self.straggler["pairs"].mean() / self.batch),
            pairs_mean=float(self.mean["pairs"].mean() / self.batch),
        )

    def summary(self) -> dict:
        """``traffic()`` as a JSON/YAML mapping."""
        return dataclasses.asdict(self.traffic())


@dataclasses.dataclass(frozen=True)
class TrafficFigures:
    """A replay's traffic, means over MoE layers per token of a rank's batch: what the busiest
    rank and the mean rank receive (both links), what the busiest receives over RDMA, and the
    token-expert pairs the busiest and the mean rank compute; over ``steps`` full steps of
    ``replayed_steps``."""

    steps: int
    replayed_steps: int
    received_straggler: float
    received_mean: float
    rdma_received_straggler: float
    pairs_straggler: float
    pairs_mean: float


def schedule(doc_offsets: np.ndarray, num_ranks: int, workload: Workload) -> tuple[np.ndarray, np.ndarray]:
    """Step and rank of every token, int64 ``[T]`` each. ``doc_offsets``: int ``[D+1]``."""
    lengths = np.diff(doc_offsets)
    doc_rank, doc_start = (_prefill if workload.phase == "prefill" else _decode)(lengths, num_ranks, workload)
    doc_of_token = np.repeat(np.arange(lengths.shape[0]), lengths)
    within = np.arange(int(doc_offsets[-1])) - doc_offsets[doc_of_token]
    rank = doc_rank[doc_of_token]
    if workload.phase == "decode":
        return doc_start[doc_of_token] + within, rank
    position = doc_start[doc_of_token] + within  # place in its rank's queue of prefill tokens
    return position // workload.tokens_per_rank, rank


def filling_documents(workload: Workload, num_ranks: int, min_tokens: int) -> np.ndarray:
    """Request lengths, int ``[R]``, that keep every rank's batch full for two steps at least and
    ``min_tokens`` tokens in all: prefill, requests of one batch each (a rank runs one a step);
    decode, one request per slot, as long as the steps."""
    steps = max(2, -(-min_tokens // (num_ranks * workload.batch)))
    if workload.phase == "prefill":
        return np.full(num_ranks * steps, workload.tokens_per_rank, np.int64)
    return np.full(num_ranks * workload.requests_per_rank, steps, np.int64)


def _prefill(lengths: np.ndarray, num_ranks: int, workload: Workload) -> tuple[np.ndarray, np.ndarray]:
    """Each request to the rank with the fewest tokens queued; its first token's queue place."""
    queued = np.zeros(num_ranks, np.int64)
    rank, start = np.zeros(lengths.shape[0], np.int64), np.zeros(lengths.shape[0], np.int64)
    for doc, length in enumerate(lengths):
        rank[doc] = int(np.argmin(queued))
        start[doc] = queued[rank[doc]]
        queued[rank[doc]] += length
    return rank, start


def _decode(lengths: np.ndarray, num_ranks: int, workload: Workload) -> tuple[np.ndarray, np.ndarray]:
    """Each request to the slot that frees first (slots: ranks x live requests); its first step."""
    free = [(0, rank, slot) for rank in range(num_ranks) for slot in range(workload.requests_per_rank)]
    heapq.heapify(free)
    rank, start = np.zeros(lengths.shape[0], np.int64), np.zeros(lengths.shape[0], np.int64)
    for doc, length in enumerate(lengths):
        step, rank[doc], slot = heapq.heappop(free)
        start[doc] = step
        heapq.heappush(free, (step + int(length), int(rank[doc]), slot))
    return rank, start


def step_cost(
    physical_to_logical: np.ndarray, trace: Trace, topology: Topology, workload: Workload
) -> StepCost:
    """Replay ``trace`` as steps under ``workload`` on a placement, int ``[L, P]`` expert of each
    physical slot (``Placement.physical_to_logical``); replicas chosen by the dispatch policy."""
    workload = dataclasses.replace(workload, kernel=sending_rule(workload.kernel, topology))
    ranks, layers = topology.num_devices, trace.num_layers
    step, source = schedule(trace.doc_offsets, ranks, workload)
    steps = int(step.max()) + 1 if step.size else 0
    totals = {figure: np.zeros((layers, steps, ranks)) for figure in FIGURES}
    replicas = [
        replica_devices(row, topology.num_experts, topology.slots_per_device) for row in physical_to_logical
    ]
    order = np.argsort(step, kind="stable")  # tokens step by step, every step whole in one chunk
    ends = np.searchsorted(step[order], np.arange(1, steps + 1))  # where each step's tokens end
    cuts = [0, *ends[np.diff(ends // STEP_TOKENS, prepend=0) > 0].tolist(), step.shape[0]]

    def layer_traffic(layer: int, ids: np.ndarray, *, tokens: np.ndarray, first: int, span: int) -> None:
        """Add tokens ``tokens`` (int ``[t]``, steps ``first..first+span-1``), their experts ``ids``
        int16 ``[t, k]`` at ``layer``, to that layer's per-step counts (its rows only)."""
        served = dispatch(ids, np.ones(tokens.shape[0]), replicas[layer], ranks)  # [t, k] device
        local = step[tokens] - first
        traffic = rank_traffic(served, ids, local, source[tokens], span, topology, workload.kernel)
        for figure, counts in traffic.items():
            totals[figure][layer, first : first + span] += counts

    # each chunk's tokens ascending: a memory-mapped trace is read in order
    chunks = (np.sort(order[lo:hi]) for lo, hi in itertools.pairwise(sorted(set(cuts))))
    for chunk in layer_chunks(trace, tokens=chunks):
        at = step[chunk.tokens]  # int [t]: whole steps, in a row
        first, span = int(at.min()), int(at.max() - at.min()) + 1
        chunk.map(functools.partial(layer_traffic, tokens=chunk.tokens, first=first, span=span))
    batches = np.bincount(step * ranks + source, minlength=steps * ranks).reshape(steps, ranks)
    counted = full_steps(batches, workload)
    batch = float(batches[counted].mean())
    return StepCost.from_counts(
        totals, counted, batch, steps, *attention_context(trace.doc_offsets, batch, workload)
    )


def attention_context(
    doc_offsets: np.ndarray, batch: float, workload: Workload
) -> tuple[float, float, float]:
    """What the rest of a step needs from the requests, ``doc_offsets`` int ``[D+1]``: tokens a
    token attends to, on average over tokens (its place in its request, itself included); tokens of
    a ``batch`` that produce logits (every decode token, a prefill request's last); and tokens of
    KV cache a token reads (decode: its whole context; prefill: about one, attention reading each
    block of keys once for a tile of queries)."""
    lengths = np.diff(doc_offsets).astype(np.float64)
    tokens = max(float(lengths.sum()), 1.0)
    context = float((lengths * (lengths + 1) / 2).sum() / tokens)
    if workload.phase == "decode":
        return context, batch, context
    return context, batch * lengths.shape[0] / tokens, 1.0


def sending_rule(kernel: str, topology: Topology) -> str:
    """The rule a kernel applies on ``topology``: with one node, ``node`` has no RDMA to
    deduplicate across and sends as ``rank`` does."""
    return "rank" if kernel == "node" and topology.num_nodes == 1 else kernel


def full_steps(batches: np.ndarray, workload: Workload) -> np.ndarray:
    """bool ``[S]``: the steps in which every rank runs a full batch, from ``batches`` int ``[S, D]``
    (tokens each rank runs in each step); every step when none is full.

    A server under load runs full batches; the trace's ramp and drain (a rank waiting for its
    last requests to finish) are an artifact of replaying a finite trace, and in them a
    co-location placement concentrates the few active experts on few ranks. Measured in the steady
    state, a placement is judged where serving time is spent.
    """
    full = (batches == workload.batch).all(axis=1)
    return full if full.any() else np.ones(batches.shape[0], bool)


def rank_traffic(
    served: np.ndarray,
    experts: np.ndarray,
    step: np.ndarray,
    source: np.ndarray,
    steps: int,
    topology: Topology,
    kernel: str,
) -> dict[str, np.ndarray]:
    """Per step and rank, float ``[S, D]`` each of ``FIGURES``, for tokens whose ``experts`` (int
    ``[T, k]``, -1 none) are served on ranks ``served`` (int ``[T, k]``), run at ``step`` by rank
    ``source`` (int ``[T]``). The tokens hold whole steps: ``experts`` counts each rank's distinct
    experts in a step (the weights it reads)."""
    ranks, node = topology.num_devices, topology.node_of_device
    cells = steps * ranks
    cell = step * ranks  # [T] the first cell of each token's step

    def per_source(messages: np.ndarray) -> np.ndarray:
        """Messages a token sends, int ``[T]``, summed per (step, source rank) cell."""
        return np.bincount(cell + source, weights=messages, minlength=cells).reshape(steps, ranks)

    def per_rank(where: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Events at rank ``where`` (int ``[T, k]``) where ``mask``, counted per (step, rank) cell.
        Masked-out events go to one spare cell past the end (cheaper than selecting the rest)."""
        at = np.where(mask, cell[:, None] + where, cells)
        return np.bincount(at.ravel(), minlength=cells + 1)[:cells].reshape(steps, ranks).astype(np.float64)

    valid = served >= 0
    width = int(experts.max(initial=0)) + 1
    # distinct experts a rank reads in a step: (step, rank, expert) cells hit at least once
    hits = np.bincount(
        np.where(valid, (cell[:, None] + served) * width + experts, cells * width).ravel(),
        minlength=cells * width + 1,
    )[: cells * width]
    out = {
        "pairs": per_rank(served, valid),
        "experts": (hits.reshape(steps, ranks, width) > 0).sum(axis=2).astype(np.float64),
    }
    # messages: every (token, expert) pair, or one per (token, destination rank)
    dests = served if kernel == "expert" else _first_in_row(served)
    same_node = node[np.maximum(served, 0)] == node[source][:, None]
    remote = (dests >= 0) & (dests != source[:, None])
    if kernel != "node":
        nvlink, rdma = remote & same_node, remote & ~same_node
        return out | {
            "sent_nvlink": per_source(nvlink.sum(axis=1)),
            "received_nvlink": per_rank(dests, nvlink),
            "sent_rdma": per_source(rdma.sum(axis=1)),
            "received_rdma": per_rank(dests, rdma),
        }
    # node: one RDMA copy per (token, remote node) to the rank of the source's local index there,
    # which forwards it over NVLink to the other destination ranks of its node
    per_node = topology.devices_per_node
    direct, far = remote & same_node, remote & ~same_node
    dest_node = node[np.maximum(dests, 0)]
    hops = _first_in_row(np.where(far, dest_node, -1))  # [T, k] remote nodes, once
    hop = hops >= 0
    local_index = (source % per_node)[:, None]
    relay = dest_node * per_node + local_index
    forward = far & (dests != relay)
    return out | {
        "sent_rdma": per_source(hop.sum(axis=1)),
        "received_rdma": per_rank(hops * per_node + local_index, hop),
        "sent_nvlink": per_source(direct.sum(axis=1)) + per_rank(relay, forward),
        "received_nvlink": per_rank(dests, direct | forward),
    }


def _first_in_row(values: np.ndarray) -> np.ndarray:
    """``values`` int ``[T, k]`` (-1 none) with every repeat of a value within its row set to -1.

    Column by column (k is small: many times faster than sorting each row), with the values seen
    so far as a bit mask when they are below 64, else compared column against column."""
    out = values.copy()
    if values.max(initial=0) < 64:
        seen = np.zeros(values.shape[0], np.uint64)
        for j in range(values.shape[1]):
            bit = np.where(values[:, j] >= 0, np.left_shift(np.uint64(1), values[:, j].astype(np.uint64)), 0)
            out[(seen & bit) != 0, j] = -1
            seen |= bit
        return out
    for j in range(1, values.shape[1]):
        out[(values[:, :j] == values[:, j : j + 1]).any(axis=1), j] = -1
    return out

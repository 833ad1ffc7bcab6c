"""Synthetic routing traces, for speed and memory work only: never for quality claims; and
routing fitted to recorded expert load, for the serving step of load records (``routing_from_load``).

Shapes like real routing so solvers face realistic inputs: expert popularity is Zipf-like (per
layer, a random permutation of 1/rank^zipf), and every document belongs to one of a few domains
whose tokens favour their own block of experts (``domain_boost`` times the weight), so experts
co-fire within domains. Each token takes k distinct experts by the Gumbel top-k trick (sampling
without replacement in proportion to the weights), vectorized over a chunk of tokens at a time.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from moeplace.calibrate.trace import Trace, TraceMeta
from moeplace.calibrate.trace_io import trace_writer
from moeplace.errors import MoeplaceError


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: N experts, top-k, L MoE layers, T tokens in D documents of G domains."""

    num_experts: int = 256
    top_k: int = 8
    num_layers: int = 58
    num_tokens: int = 1_000_000
    num_documents: int = 2_000
    num_domains: int = 8
    zipf: float = 0.3  # hottest expert ~3-4x the mean load, as on the real traces
    domain_boost: float = 8.0  # clustering gain ~2.1 into 8 groups at N = 256, as on the real traces
    routing_groups: int = 0  # DeepSeek-V3's group-limited routing: G groups of N / G experts (0: off;
    # the trace's metadata refuses groups that do not fit)
    groups_per_token: int = 0  # ... a token's experts from its best K groups
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.top_k <= self.num_experts or self.num_experts > np.iinfo(np.int16).max:
            raise MoeplaceError(
                f"need 1 <= top-k <= experts <= 32767, got {self.top_k} of {self.num_experts}"
            )
        if not 1 <= self.num_documents <= self.num_tokens or min(self.num_layers, self.num_domains) < 1:
            raise MoeplaceError("need 1 <= documents <= tokens, and at least one layer and one domain")


def layer_weights(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Log-weights float32 ``[L, G, N]`` of each expert per layer and domain."""
    n = spec.num_experts
    popularity = 1.0 / np.arange(1, n + 1) ** spec.zipf
    weights = np.empty((spec.num_layers, spec.num_domains, n), np.float32)
    block = max(1, n // spec.num_domains)
    for layer in range(spec.num_layers):
        base = popularity[rng.permutation(n)]
        favoured = rng.permutation(n)  # domain g favours experts favoured[g * block : (g + 1) * block]
        for domain in range(spec.num_domains):
            w = base.copy()
            w[favoured[domain * block : (domain + 1) * block]] *= spec.domain_boost
            weights[layer, domain] = np.log(w)
    return weights


def generate(spec: SyntheticSpec, path: str | Path, chunk_tokens: int = 1 << 15) -> None:
    """Write the synthetic trace to ``path`` (a trace directory, streamed: memory stays ~constant)."""
    spec.check()
    rng = np.random.default_rng(spec.seed)
    log_w = layer_weights(spec, rng)
    cuts = np.sort(rng.choice(np.arange(1, spec.num_tokens), spec.num_documents - 1, replace=False))
    lengths = np.diff(np.concatenate([[0], cuts, [spec.num_tokens]]))
    domains = rng.integers(0, spec.num_domains, spec.num_documents)
    meta = TraceMeta(
        model=f"synthetic/{spec.num_experts}x{spec.top_k}x{spec.num_layers}",
        num_experts=spec.num_experts,
        top_k=spec.top_k,
        layer_ids=tuple(range(spec.num_layers)),
        phase="synthetic",
        source=f"moeplace synthetic generator: {dataclasses.asdict(spec)}",
        note="synthetic routing: for speed and memory work only, never for quality claims",
        routing_groups=spec.routing_groups or None,
        groups_per_token=spec.groups_per_token or None,
    )
    groups = (spec.routing_groups, spec.groups_per_token) if spec.routing_groups else None
    with trace_writer(path, meta) as writer:
        for length, domain in zip(lengths.tolist(), domains.tolist(), strict=True):
            ids = np.empty((length, spec.num_layers, spec.top_k), np.int16)
            for start in range(0, length, chunk_tokens):
                count = min(chunk_tokens, length - start)
                for layer in range(spec.num_layers):
                    ids[start : start + count, layer] = _top_k(
                        log_w[layer, domain], count, spec.top_k, rng, groups
                    )
            writer.add(ids, f"domain{domain}")


def _top_k(
    log_weight: np.ndarray,
    count: int,
    k: int,
    rng: np.random.Generator,
    groups: tuple[int, int] | None = None,
) -> np.ndarray:
    """k distinct experts per token, drawn without replacement by weight: int16 ``[count, k]``
    (``log_weight`` float ``[N]``)."""
    return _pick(log_weight + _gumbel(rng, (count, log_weight.shape[0])), k, groups)


def _gumbel(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Standard Gumbel noise, float32 ``shape``: added to log-weights, its top k are a draw
    without replacement in proportion to the weights."""
    noise = rng.random(shape, dtype=np.float32)
    return -np.log(-np.log(np.maximum(noise, np.float32(1e-30))))


def _pick(keys: np.ndarray, k: int, groups: tuple[int, int] | None) -> np.ndarray:
    """The k largest ``keys`` (float ``[T, N]``, overwritten) of each token: int16 ``[T, k]``.
    With ``groups`` (G, K), DeepSeek-V3's rule first: score each of G groups of consecutive experts
    by its two best keys and keep each token's K best groups."""
    count = keys.shape[0]
    if groups is not None:
        num_groups, per_token = groups
        by_group = keys.reshape(count, num_groups, -1)
        best_two = -np.partition(-by_group, 1, axis=2)[:, :, :2].sum(axis=2)  # [count, G]
        dropped = np.argpartition(-best_two, per_token - 1, axis=1)[:, per_token:]
        np.put_along_axis(by_group, dropped[:, :, None], -np.inf, axis=1)
    return np.argpartition(-keys, k - 1, axis=1)[:, :k].astype(np.int16)


# Routing fitted to recorded load (``routing_from_load``)
FIT_POOL = 1 << 14  # distinct routings drawn a layer; steps repeat them in shuffled order
FIT_TOLERANCE = 0.005  # total variation from the recorded shares at which fitting stops
FIT_ROUNDS = 20


@dataclasses.dataclass(frozen=True)
class FittedRouting:
    """Synthetic routing fitted to recorded expert load. ``trace``: the routing; ``distance``:
    float ``[L]``, per layer the total variation between its expert shares and the recorded ones
    (0.01: 1% of the activations sit on other experts than recorded)."""

    trace: Trace
    distance: np.ndarray


def routing_from_load(
    load: np.ndarray, meta: TraceMeta, doc_lengths: np.ndarray, seed: int = 0
) -> FittedRouting:
    """Tokens routed by ``meta``'s rule (top-k, group-limited when it has routing groups) with
    per-expert weights fitted so each layer's expert shares match ``load`` (float ``[L, N]``).

    For load records, which hold no per-token routing: the serving step needs tokens. Per layer,
    ``FIT_POOL`` tokens draw their experts by the Gumbel top-k trick from fixed noise, and the
    weights are corrected by the ratio of recorded to drawn shares until the drawn shares are
    within ``FIT_TOLERANCE``; the tokens of the trace (``doc_lengths`` int ``[D]``, summing to T)
    repeat the pool in a shuffled order. Layers are drawn independently: no co-activation beyond
    what the routing rule itself makes, so this prices balance and the group limit, not
    co-location.
    """
    load = np.asarray(load, np.float64)
    doc_lengths = np.asarray(doc_lengths, np.int64)
    tokens = int(doc_lengths.sum())
    layers = len(meta.layer_ids)
    if load.shape != (layers, meta.num_experts) or tokens < 1:
        raise MoeplaceError(f"load {load.shape} does not match {layers} layers of {meta.num_experts} experts")
    if (load.sum(axis=1) <= 0).any():
        raise MoeplaceError("a layer has no recorded load to fit routing to")
    pool = min(FIT_POOL, tokens)

    def layer_ids(layer: int) -> tuple[np.ndarray, float]:
        rng = np.random.default_rng([seed, layer])
        drawn = _fit_layer(load[layer] / load[layer].sum(), meta.top_k, meta.group_limit, pool, rng)
        order = np.concatenate([rng.permutation(pool) for _ in range(-(-tokens // pool))])[:tokens]
        ids = drawn[order]
        return ids, _distance(ids, load[layer] / load[layer].sum())

    ids = np.empty((tokens, layers, meta.top_k), np.int16)
    distance = np.empty(layers)
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, layers))) as pool_:
        for layer, (layer_routing, gap) in enumerate(pool_.map(layer_ids, range(layers))):
            ids[:, layer], distance[layer] = layer_routing, gap
    offsets = np.concatenate([[0], np.cumsum(doc_lengths)]).astype(np.int64)
    synthetic = dataclasses.replace(
        meta,
        source=f"synthetic routing fitted to the expert load of: {meta.source}"[:4000],
        note="synthetic routing: per-expert weights fitted to recorded load, layers drawn independently",
    )
    labels = np.full(doc_lengths.shape[0], "synthetic")
    return FittedRouting(Trace(ids, offsets, labels, synthetic), distance)


def _fit_layer(
    share: np.ndarray, k: int, groups: tuple[int, int] | None, pool: int, rng: np.random.Generator
) -> np.ndarray:
    """``pool`` tokens' k experts, int16 ``[pool, k]``, whose shares match ``share`` (float
    ``[N]``, summing to 1) within ``FIT_TOLERANCE`` or after ``FIT_ROUNDS`` corrections."""
    gumbel = _gumbel(rng, (pool, share.shape[0]))
    # an expert with no load gets a weight too small to be drawn while k others remain
    target = np.log(np.maximum(share, 1e-12)).astype(np.float32)
    log_weight = target.copy()
    for _ in range(FIT_ROUNDS):
        ids = _pick(gumbel + log_weight, k, groups)
        drawn = _drawn_shares(ids, share.shape[0])
        if 0.5 * np.abs(drawn - share).sum() <= FIT_TOLERANCE:
            break
        # damped; an expert drawn 0 times is treated as drawn half a time
        drawn_log = np.log(np.maximum(drawn, 0.5 / ids.size)).astype(np.float32)
        log_weight += np.float32(0.8) * (target - drawn_log)
    return ids


def _drawn_shares(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """float ``[N]``: each expert's share of the picks in ``ids`` (int ``[T, k]``)."""
    return np.bincount(ids.ravel(), minlength=num_experts) / ids.size


def _distance(ids: np.ndarray, share: np.ndarray) -> float:
    """Total variation between the expert shares of ``ids`` (int ``[T, k]``) and ``share``."""
    return float(0.5 * np.abs(_drawn_shares(ids, share.shape[0]) - share).sum())

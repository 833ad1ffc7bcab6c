"""Synthetic routing traces, for speed and memory work only: never for quality claims.

Shapes like real routing so solvers face realistic inputs: expert popularity is Zipf-like (per
layer, a random permutation of 1/rank^zipf), and every document belongs to one of a few domains
whose tokens favour their own block of experts (``domain_boost`` times the weight), so experts
co-fire within domains. Each token takes k distinct experts by the Gumbel top-k trick (sampling
without replacement in proportion to the weights), vectorized over a chunk of tokens at a time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from moeplace.calibrate.trace import TraceMeta
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
    """k distinct experts per token, drawn without replacement by weight: int16 ``[count, k]``.
    With ``groups`` (G, K), DeepSeek-V3's rule first: score each of G groups of consecutive experts
    by its two best keys and keep each token's K best groups."""
    noise = rng.random((count, log_weight.shape[0]), dtype=np.float32)
    keys = log_weight - np.log(-np.log(np.maximum(noise, np.float32(1e-30))))  # Gumbel perturbation
    if groups is not None:
        num_groups, per_token = groups
        by_group = keys.reshape(count, num_groups, -1)
        best_two = -np.partition(-by_group, 1, axis=2)[:, :, :2].sum(axis=2)  # [count, G]
        dropped = np.argpartition(-best_two, per_token - 1, axis=1)[:, per_token:]
        np.put_along_axis(by_group, dropped[:, :, None], -np.inf, axis=1)
    return np.argpartition(-keys, k - 1, axis=1)[:, :k].astype(np.int16)

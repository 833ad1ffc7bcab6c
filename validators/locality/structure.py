"""Co-activation structure of one MoE layer: Gini, clustering gain, and the shuffle null.

Shapes: T tokens, k slots (-1 = no expert), N experts, G groups.

- **co-activation Gini**: inequality of the pair counts over all expert pairs (0: every pair fires
  together equally often; near 1: a few pairs carry all co-firing).
- **clustering gain**: cluster the experts into G equal groups by co-activation (average-linkage
  agglomeration, the ``greedy`` solver's), then divide the co-activation inside the groups by what
  independent selection with the same per-expert frequencies would put there, sum over same-group
  pairs of T p_i p_j with p_i = load_i / T. Above 1: experts that fire together, beyond popularity.
- **shuffle null**: permute, independently for each expert, which tokens selected it. Loads stay,
  co-firing goes; the gain of the shuffled trace (clustered afresh) is what chance and the
  clustering alone produce. Real structure shows gain well above 1 collapsing to ~1 here.
"""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import gini
from moeplace.planner.agglomerate import agglomerate
from moeplace.planner.topology import Topology


def token_expert_matrix(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """bool ``[T, N]``: token t selected expert e."""
    ids = np.asarray(topk_ids, dtype=np.int64)
    chosen = np.zeros((ids.shape[0], num_experts + 1), bool)  # column N absorbs -1
    chosen[np.arange(ids.shape[0])[:, None], ids] = True
    return chosen[:, :num_experts]


def coactivation(chosen: np.ndarray) -> np.ndarray:
    """int64 ``[N, N]`` tokens selecting both experts, zero diagonal, from ``chosen`` bool ``[T, N]``."""
    counts = np.zeros((chosen.shape[1], chosen.shape[1]), np.int64)
    for first in range(0, chosen.shape[0], 1 << 16):  # bounded float32 blocks
        block = chosen[first : first + (1 << 16)].astype(np.float32)
        counts += np.rint(block.T @ block).astype(np.int64)
    np.fill_diagonal(counts, 0)
    return counts


def coactivation_gini(coact: np.ndarray) -> float:
    """Gini of the co-activation counts over the N (N - 1) / 2 expert pairs."""
    return gini(coact[np.triu_indices(coact.shape[0], 1)])


def clustering_gain(chosen: np.ndarray, groups: int) -> float:
    """Co-activation inside G co-activation groups over its expectation under independence."""
    coact = coactivation(chosen)
    num_experts = chosen.shape[1]
    tokens = chosen.shape[0]
    load = chosen.sum(axis=0).astype(np.float64)
    no_cap = np.zeros((0, num_experts), np.int64)
    group = agglomerate(coact, Topology(num_experts, groups), no_cap, np.zeros(0))
    same = np.triu(group[:, None] == group[None, :], 1)
    expected = (load[:, None] * load[None, :] / max(tokens, 1))[same].sum()
    return float(coact[same].sum() / expected) if expected else 1.0


def shuffled(chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``chosen`` with each expert's column permuted on its own: loads kept, co-firing destroyed."""
    rows = np.argsort(rng.random(chosen.shape), axis=0)  # an independent permutation per column
    return np.take_along_axis(chosen, rows, axis=0)

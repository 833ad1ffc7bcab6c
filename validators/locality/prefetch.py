"""Next-token prefetch hit rate of one MoE layer: frequency (LFU) versus co-activation.

Fit on the first half of each document, score on the second (a document's tokens never serve
both). At a budget of B experts, before token t + 1 a predictor names B experts; its hit rate is
(experts of t + 1 it named) / (experts of t + 1), over all scored consecutive pairs:

- **LFU**: the B experts most frequent in the fit halves (the same B every time).
- **co-activation**: the B experts with the highest co-activation (fit halves) with the set that
  fired at t: the sum of their co-activation rows; ties to the lower id.
"""

from __future__ import annotations

import numpy as np

from moeplace.validators.locality.structure import coactivation, token_expert_matrix


def document_halves(doc_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bool ``[T]`` masks: the first and the second half of each document (odd middle to the first)."""
    lengths = np.diff(doc_offsets)
    position = np.arange(doc_offsets[-1]) - np.repeat(doc_offsets[:-1], lengths)
    half = np.repeat((lengths + 1) // 2, lengths)
    return position < half, position >= half


def prefetch_hit_rates(
    topk_ids: np.ndarray, doc_offsets: np.ndarray, num_experts: int, budgets: list[int]
) -> dict[str, list[float]]:
    """``{"lfu": [hit rate per budget], "coact": [...]}`` for one layer's ids ``[T, k]``."""
    chosen = token_expert_matrix(topk_ids, num_experts)
    first, second = document_halves(doc_offsets)
    fit = chosen[first]
    coact = coactivation(fit).astype(np.float64)
    frequency = fit.sum(axis=0)
    # scored pairs (t, t + 1): both in the second half of one document
    now = np.flatnonzero(second[:-1] & second[1:] & (np.diff(_doc_index(doc_offsets)) == 0))
    fired, following = chosen[now], chosen[now + 1]
    wanted = following.sum()
    score = fired.astype(np.float64) @ coact  # [P, N]
    order = np.argsort(-score, axis=1, kind="stable")  # ties to the lower id
    popular = np.argsort(-frequency, kind="stable")
    rates = {"lfu": [], "coact": []}
    for budget in budgets:
        rates["lfu"].append(float(following[:, popular[:budget]].sum() / max(wanted, 1)))
        named = np.take_along_axis(following, order[:, :budget], axis=1)
        rates["coact"].append(float(named.sum() / max(wanted, 1)))
    return rates


def _doc_index(doc_offsets: np.ndarray) -> np.ndarray:
    """int64 ``[T]``: the document of each token."""
    return np.repeat(np.arange(doc_offsets.shape[0] - 1), np.diff(doc_offsets))

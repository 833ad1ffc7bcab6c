"""Fit / held-out split by whole documents: a document's tokens never straddle the two sides."""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.trace import Trace
from moeplace.errors import MoeplaceError


def split_documents(trace: Trace, holdout_share: float, seed: int = 0) -> tuple[Trace, Trace]:
    """Split ``trace`` into ``(fit, held_out)`` by documents, seeded and reproducible.

    ``round(holdout_share * D)`` documents, drawn by a permutation from ``numpy.random.default_rng(seed)``,
    go to the held-out side; both sides keep the trace's document order. Each side gets at least
    one document.
    """
    if not 0.0 < holdout_share < 1.0:
        raise MoeplaceError(f"the held-out share must be between 0 and 1 (exclusive), got {holdout_share}")
    num_docs = trace.num_documents
    if num_docs < 2:
        raise MoeplaceError(f"cannot split {num_docs} document(s): need at least 2")
    num_held = min(max(round(holdout_share * num_docs), 1), num_docs - 1)
    order = np.random.default_rng(seed).permutation(num_docs)
    held = np.sort(order[:num_held])
    fit = np.sort(order[num_held:])
    sides = trace.select_documents(fit), trace.select_documents(held)
    for side, name in zip(sides, ("fit", "held-out"), strict=True):
        if side.num_tokens == 0:
            raise MoeplaceError(f"the {name} documents of this split hold no tokens; use another seed")
    return sides

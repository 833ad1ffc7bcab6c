"""Fit / held-out split by whole documents: a document's tokens never straddle the two sides."""

from __future__ import annotations

import fnmatch

import numpy as np

from moeplace.calibrate.fingerprints import document_hashes
from moeplace.calibrate.trace import Trace
from moeplace.errors import MoeplaceError


def split_documents(trace: Trace, holdout_share: float, seed: int = 0) -> tuple[Trace, Trace]:
    """Split ``trace`` into ``(fit, held_out)`` by documents, seeded and reproducible.

    ``round(holdout_share * D)`` documents, drawn by a permutation from ``numpy.random.default_rng(seed)``,
    go to the held-out side; both sides keep the trace's document order. Each side gets at least
    one document. Documents with identical routing (a prompt served twice) stay on one side
    (``keep_copies_together``), so the held-out side never holds a calibration document.
    """
    if not 0.0 < holdout_share < 1.0:
        raise MoeplaceError(f"{{=holdout_share}} must be between 0 and 1 (exclusive), got {holdout_share}")
    num_docs = trace.num_documents
    if num_docs < 2:
        raise MoeplaceError(f"cannot split {num_docs} document(s): need at least 2")
    num_held = min(max(round(holdout_share * num_docs), 1), num_docs - 1)
    order = np.random.default_rng(seed).permutation(num_docs)
    held, fit = keep_copies_together(trace, np.sort(order[:num_held]), np.sort(order[num_held:]))
    sides = trace.select_documents(fit), trace.select_documents(held)
    for side, name in zip(sides, ("fit", "held-out"), strict=True):
        if side.num_tokens == 0:
            raise MoeplaceError(f"the {name} documents of this split hold no tokens; use another seed")
    return sides


def keep_copies_together(trace: Trace, held: np.ndarray, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(held, fit)`` document indices with every held-out document whose routing is identical
    to a fit document's (the same hash, ``calibrate/fingerprints.py``) moved to the fit side."""
    hashes = document_hashes(trace)
    copies = np.isin(hashes[held], hashes[fit])
    if not copies.any():
        return held, fit
    return held[~copies], np.sort(np.concatenate([fit, held[copies]]))


def matching_documents(trace: Trace, patterns: str) -> np.ndarray:
    """bool ``[D]``: the documents whose label matches one of ``patterns``, comma-separated
    shell-style patterns (``law``, ``gpqa*``, ``mmlu_pro*,sorry*``), case-sensitive."""
    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    if not globs:
        raise MoeplaceError("no label pattern given")
    labels = trace.doc_labels.tolist()
    return np.array([any(fnmatch.fnmatchcase(label, g) for g in globs) for label in labels], bool)


def split_by_label(trace: Trace, patterns: str, keep_all: bool = False) -> tuple[Trace, Trace]:
    """Split ``trace`` into ``(fit, held_out)``: the documents whose label matches ``patterns``
    (see ``matching_documents``) are held out, the others fit. Fit on some kinds of traffic,
    score on another: a change of mix that a random split never shows. A matching document whose
    routing is identical to another's goes to the fit side with it (``keep_copies_together``).
    ``keep_all``: every document may match (selecting a kind of traffic, not splitting)."""
    held = matching_documents(trace, patterns)
    if not held.any():
        groups = ", ".join(label_groups(trace))
        raise MoeplaceError(f"no document label matches {patterns!r}; label groups here: {groups}")
    if held.all() and not keep_all:
        raise MoeplaceError(f"every document label matches {patterns!r}: nothing is left to fit on")
    if keep_all:  # selecting a kind of traffic: nothing is fit on the rest
        return trace.select_documents(np.flatnonzero(~held)), trace.select_documents(np.flatnonzero(held))
    held, fit = keep_copies_together(trace, np.flatnonzero(held), np.flatnonzero(~held))
    if not held.size:
        raise MoeplaceError(
            f"every document matching {patterns!r} has a copy among the others: nothing to hold out"
        )
    return trace.select_documents(fit), trace.select_documents(held)


def label_groups(trace: Trace) -> list[str]:
    """The distinct label groups (``Trace.doc_groups``), in order of first appearance."""
    return list(dict.fromkeys(trace.doc_groups.tolist()))

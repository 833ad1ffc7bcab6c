"""Local routing consistency (SRP, SCH) on hand-made traces with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moeplace.errors import MoeplaceError
from moeplace.validators.locality import consistency
from moeplace.validators.locality.consistency import (
    segment_cache_best_hit_rate,
    segment_cache_hit_curve,
    segment_routing_best_performance,
    segment_routing_f1,
    segment_starts,
)


def offsets(*lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def brute_force(ids, doc_offsets, n, m, stride, cache):
    """SRP and SCH by looping over documents, segments and thresholds (reference for small traces)."""
    windows = []
    for lo, hi in itertools.pairwise(doc_offsets):
        for start in range(lo, hi - m + 1, stride):
            counts = np.zeros(n, dtype=int)
            for row in ids[start : start + m]:
                for e in row:
                    if e >= 0:
                        counts[e] += 1
            windows.append(counts)
    acts = sum(int(c.sum()) for c in windows)
    f1 = []
    for rho in range(m + 1):
        matches = sum(int(c[c >= rho].sum()) for c in windows)
        preds = m * sum(int((c >= rho).sum()) for c in windows)
        f1.append(2 * matches / (preds + acts))
    hits = sum(int(np.sort(c)[::-1][:cache].sum()) for c in windows)
    return max(f1), hits / acts


# ids: token 0 {0,1}, token 1 {0,2}, token 2 {0,1}, token 3 {2,3}; N = 4, k = 2
MIXED = np.array([[0, 1], [0, 2], [0, 1], [2, 3]])


def test_consistent_document_scores_one():
    ids = np.tile([1, 3, 5], (12, 1))
    doc = offsets(12)
    for m in (1, 2, 4, 12):
        assert segment_routing_best_performance(ids, doc, 8, m) == 1.0
        assert segment_cache_best_hit_rate(ids, doc, 8, m, 3) == 1.0
        assert segment_cache_best_hit_rate(ids, doc, 8, m, 5) == 1.0
        assert segment_cache_best_hit_rate(ids, doc, 8, m, 2) == pytest.approx(2 / 3)


def test_disjoint_sets_every_token():
    # token t routes to {2t, 2t+1}: every segment of m tokens uses 2m experts once each
    ids = np.arange(16).reshape(8, 2)
    doc = offsets(8)
    for m in (1, 2, 4):
        assert segment_cache_best_hit_rate(ids, doc, 16, m, 2) == pytest.approx(1 / m)
        for c in (1, 3, 5, 16):
            assert segment_cache_best_hit_rate(ids, doc, 16, m, c) == pytest.approx(min(c, 2 * m) / (2 * m))
        # rho = 1 routes each token to the segment's 2m experts: precision 1/m, recall 1
        assert segment_routing_best_performance(ids, doc, 16, m) == pytest.approx(2 / (m + 1))


def test_segments_stay_inside_documents():
    # doc A always {0,1}, doc B always {2,3}: each is perfectly consistent on its own
    ids = np.array([[0, 1]] * 3 + [[2, 3]] * 3)
    split, joined = offsets(3, 3), offsets(6)
    assert segment_routing_best_performance(ids, split, 4, 3) == 1.0
    assert segment_cache_best_hit_rate(ids, split, 4, 3, 2) == 1.0
    # one document: windows straddling the switch mix both sets (hits 6+4+4+6 of 24)
    assert segment_cache_best_hit_rate(ids, joined, 4, 3, 2) == pytest.approx(20 / 24)
    assert segment_routing_best_performance(ids, joined, 4, 3) < 1.0


def test_short_documents_hold_no_segment():
    # the 2-token document is too short for m = 3; only the 4-token one (2 windows) counts
    ids = np.array([[2, 3], [2, 3], [0, 1], [0, 2], [0, 1], [2, 3]])
    doc = offsets(2, 4)
    np.testing.assert_array_equal(segment_starts(doc, 3), [2, 3])
    np.testing.assert_array_equal(segment_starts(doc, 2, stride=2), [0, 2, 4])
    np.testing.assert_array_equal(segment_starts(offsets(5, 0, 3), 2, stride=2), [0, 2, 5])
    alone = segment_cache_best_hit_rate(ids[2:], offsets(4), 4, 3, 2)
    assert segment_cache_best_hit_rate(ids, doc, 4, 3, 2) == alone
    # windows [0,1,2] {0:3, 1:2, 2:1}, [1,2,3] {0:2, 1:1, 2:2, 3:1}: top-2 hits 5 + 4 of 12
    assert alone == pytest.approx(9 / 12)


def test_mixed_example_by_hand():
    doc = offsets(4)
    # windows [0,1] counts (2,1,1,0), [1,2] (2,1,1,0), [2,3] (1,1,1,1); 12 activations
    np.testing.assert_allclose(segment_cache_hit_curve(MIXED, doc, 4, 2), [5 / 12, 8 / 12, 11 / 12, 1])
    for c, want in ((1, 5 / 12), (2, 8 / 12), (3, 11 / 12), (4, 1), (9, 1)):
        assert segment_cache_best_hit_rate(MIXED, doc, 4, 2, c) == pytest.approx(want)
    # rho 0: 2*12 / (2*12 + 12); rho 1: 2*12 / (2*10 + 12); rho 2: 2*4 / (2*2 + 12)
    np.testing.assert_allclose(segment_routing_f1(MIXED, doc, 4, 2), [2 / 3, 3 / 4, 1 / 2])
    assert segment_routing_best_performance(MIXED, doc, 4, 2) == pytest.approx(3 / 4)
    # disjoint segments [0,1] (2,1,1,0) and [2,3] (1,1,1,1); 8 activations
    assert segment_cache_best_hit_rate(MIXED, doc, 4, 2, 1, stride=2) == pytest.approx(3 / 8)
    assert segment_cache_best_hit_rate(MIXED, doc, 4, 2, 2, stride=2) == pytest.approx(5 / 8)
    np.testing.assert_allclose(segment_routing_f1(MIXED, doc, 4, 2, stride=2), [2 / 3, 8 / 11, 2 / 5])


def test_empty_slots_are_no_activation():
    ids = np.array([[0, -1], [0, 1]])  # counts (2, 1), 3 activations
    assert segment_cache_best_hit_rate(ids, offsets(2), 2, 2, 1) == pytest.approx(2 / 3)
    # rho 1: matches 3, preds 2*2 -> 6/7; rho 2: matches 2, preds 2 -> 4/5
    assert segment_routing_best_performance(ids, offsets(2), 2, 2) == pytest.approx(6 / 7)


@pytest.mark.parametrize("stride", [1, 3])
def test_matches_brute_force_on_random_traces(monkeypatch, stride):
    rng = np.random.default_rng(7)
    n, k = 12, 3
    ids = np.argsort(rng.random((150, n)), axis=1)[:, :k].astype(np.int16)
    ids[rng.random(ids.shape) < 0.05] = -1
    doc = offsets(1, 40, 0, 57, 2, 50)
    monkeypatch.setattr(consistency, "_BLOCK_ELEMENTS", 64)  # many blocks, some narrower than m
    for m in (1, 2, 5, 9):
        for c in (1, 3, 7):
            srp, sch = brute_force(ids, doc, n, m, stride, c)
            assert segment_routing_best_performance(ids, doc, n, m, stride=stride) == pytest.approx(srp)
            assert segment_cache_best_hit_rate(ids, doc, n, m, c, stride=stride) == pytest.approx(sch)


def test_monotone_in_cache_size_and_one_at_length_one():
    rng = np.random.default_rng(3)
    n, k = 16, 4
    ids = np.argsort(rng.random((300, n)), axis=1)[:, :k]
    doc = offsets(100, 120, 80)
    for m in (2, 8, 32):
        curve = segment_cache_hit_curve(ids, doc, n, m)
        singles = [segment_cache_best_hit_rate(ids, doc, n, m, c) for c in range(1, n + 1)]
        np.testing.assert_allclose(curve, singles)
        assert np.all(np.diff(curve) >= 0) and curve[-1] == 1.0
        assert curve[k - 1] < 1.0
    assert segment_routing_best_performance(ids, doc, n, 1) == 1.0
    assert segment_cache_best_hit_rate(ids, doc, n, 1, k) == 1.0
    assert segment_cache_best_hit_rate(ids, doc, n, 1, k - 1) == pytest.approx((k - 1) / k)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"segment_length": 0}, "segment_length"),
        ({"segment_length": 2.0}, "segment_length"),
        ({"segment_length": True}, "segment_length"),
        ({"cache_size": 0}, "cache_size"),
        ({"num_experts": 0}, "num_experts"),
        ({"stride": 0}, "stride"),
        ({"topk_ids": np.array([0, 1, 2, 3])}, "topk_ids"),
        ({"topk_ids": MIXED.astype(float)}, "topk_ids"),
        ({"topk_ids": np.array([[0, 1], [0, 4], [0, 1], [2, 3]])}, "outside"),
        ({"topk_ids": np.array([[0, 1], [0, -2], [0, 1], [2, 3]])}, "outside"),
        ({"topk_ids": np.array([[0, 1], [2, 2], [0, 1], [2, 3]])}, "twice"),
        ({"doc_offsets": np.array([0, 3])}, "doc_offsets"),
        ({"doc_offsets": np.array([0, 3, 2, 4])}, "doc_offsets"),
        ({"doc_offsets": np.array([4])}, "doc_offsets"),
        ({"segment_length": 5}, "no document"),
        ({"topk_ids": np.full((4, 2), -1)}, "no expert activation"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"topk_ids": MIXED, "doc_offsets": offsets(4), "num_experts": 4, "segment_length": 2}
    args.update(kwargs)
    cache_size = args.pop("cache_size", 2)
    with pytest.raises(MoeplaceError, match=match):
        segment_cache_best_hit_rate(**args, cache_size=cache_size)
    if "cache_size" not in kwargs:
        with pytest.raises(MoeplaceError, match=match):
            segment_routing_best_performance(**args)
        with pytest.raises(MoeplaceError, match=match):
            segment_cache_hit_curve(**args)

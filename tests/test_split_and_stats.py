import dataclasses
import itertools

import numpy as np
import pytest

from conftest import make_trace, random_trace
from moeplace.calibrate.split import split_by_label, split_documents
from moeplace.calibrate.stats import compute_statistics, document_weights, load_skew
from moeplace.calibrate.stats_io import load_statistics, save_statistics
from moeplace.errors import MoeplaceError


def test_split_keeps_whole_documents_and_is_seeded():
    trace = random_trace(tokens=600, docs=30)
    fit, held = split_documents(trace, holdout_share=0.3, seed=4)
    assert held.num_documents == 9 and fit.num_documents == 21
    assert fit.num_tokens + held.num_tokens == trace.num_tokens
    labels = set(fit.doc_labels) | set(held.doc_labels)
    assert labels == set(trace.doc_labels) and not set(fit.doc_labels) & set(held.doc_labels)
    for part in (fit, held):  # every document arrives whole and unchanged
        for i, label in enumerate(part.doc_labels):
            d = int(label[3:])
            original = trace.topk_ids[trace.doc_offsets[d] : trace.doc_offsets[d + 1]]
            np.testing.assert_array_equal(
                part.topk_ids[part.doc_offsets[i] : part.doc_offsets[i + 1]], original
            )
    again = split_documents(trace, holdout_share=0.3, seed=4)[1]
    other = split_documents(trace, holdout_share=0.3, seed=5)[1]
    assert list(again.doc_labels) == list(held.doc_labels) != list(other.doc_labels)


@pytest.mark.parametrize("holdout", [0.0, 1.0, -0.2, 1.5])
def test_split_rejects_bad_fraction(holdout):
    with pytest.raises(MoeplaceError, match="holdout_share must be between 0 and 1"):
        split_documents(random_trace(), holdout, 0)


def test_split_needs_two_documents():
    with pytest.raises(MoeplaceError, match="at least 2"):
        split_documents(make_trace([[0, 1]], [1], 4), 0.5, 0)


def brute_force(trace, layer):
    n = trace.meta.num_experts
    load, coact = np.zeros(n, int), np.zeros((n, n), int)
    for token in np.asarray(trace.topk_ids[:, layer]):
        experts = [int(e) for e in token if e >= 0]
        for e in experts:
            load[e] += 1
        for a, b in itertools.permutations(experts, 2):
            coact[a, b] += 1
    return load, coact


def test_statistics_match_brute_force_with_padding():
    trace = random_trace(tokens=300, docs=5, layers=3, experts=12, top_k=4)
    ids = trace.topk_ids.copy()
    ids[::7, 1, 2] = -1  # some slots select no expert
    trace = make_trace(ids, np.diff(trace.doc_offsets), 12)
    stats = compute_statistics(trace, chunk_tokens=64)
    for layer in range(3):
        load, coact = brute_force(trace, layer)
        np.testing.assert_array_equal(stats.load[layer], load)
        np.testing.assert_array_equal(stats.coact[layer], coact)
        chosen = [tuple(sorted(int(e) for e in token if e >= 0)) for token in ids[:, layer]]
        counted = {
            tuple(int(e) for e in row if e >= 0): c for row, c in zip(*_sets(stats, layer), strict=True)
        }
        assert counted == {s: chosen.count(s) for s in set(chosen)}  # distinct sets, token counts


def _sets(stats, layer):
    return stats.topk_sets[layer].sets.tolist(), stats.topk_sets[layer].counts.tolist()


def test_large_traces_keep_whole_sets_sampled_by_a_hash_of_the_set(tmp_path):
    trace = random_trace(tokens=4000, docs=40, layers=2, experts=64, top_k=6)  # sets nearly all distinct
    exact, sampled = compute_statistics(trace), compute_statistics(trace, set_tokens=1000)
    assert (exact.set_sample_rate, sampled.set_sample_rate) == (1.0, 0.25)
    for name in ("load", "coact", "load_resamples"):  # every token still counted
        np.testing.assert_array_equal(getattr(sampled, name), getattr(exact, name))
    for whole, part in zip(exact.topk_sets, sampled.topk_sets, strict=True):
        counts = dict(zip(map(tuple, whole.sets.tolist()), whole.counts.tolist(), strict=True))
        assert all(
            counts[tuple(row)] == c for row, c in zip(part.sets.tolist(), part.counts.tolist(), strict=True)
        )
        assert 0.2 < part.counts.sum() / whole.counts.sum() < 0.3
        assert part == whole.sampled(0.25, 64, seed=0)
    save_statistics(sampled, tmp_path / "s.npz")
    loaded = load_statistics(tmp_path / "s.npz")
    assert loaded.set_sample_rate == 0.25 and loaded.topk_sets == sampled.topk_sets
    docs = np.arange(40)  # shards sampled at 0.5 each merge to the table at 0.5, which nests the 0.25 one
    halves = [compute_statistics(trace.select_documents(d), set_tokens=1000) for d in (docs[:20], docs[20:])]
    merged = halves[0] + halves[1]
    assert merged.set_sample_rate == 0.5
    for whole, part, both in zip(exact.topk_sets, sampled.topk_sets, merged.topk_sets, strict=True):
        assert both == whole.sampled(0.5, 64, seed=0) and both.sampled(0.25, 64, seed=0) == part


def test_statistics_merge_exactly(real_trace):
    docs = np.arange(real_trace.num_documents)
    first, second = real_trace.select_documents(docs[:90]), real_trace.select_documents(docs[90:])
    merged = compute_statistics(first, seed=3) + compute_statistics(second, seed=3)
    whole = compute_statistics(real_trace, seed=3)
    for name in ("load", "coact", "load_resamples"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name))
    assert merged.topk_sets == whole.topk_sets
    assert (merged.num_tokens, merged.num_documents) == (whole.num_tokens, whole.num_documents)


@pytest.mark.slow
def test_resample_weights_follow_content_not_position(real_trace):
    docs = np.arange(real_trace.num_documents)
    reordered = real_trace.select_documents(docs[::-1])
    np.testing.assert_array_equal(
        compute_statistics(reordered, seed=1).load_resamples,
        compute_statistics(real_trace, seed=1).load_resamples,
    )
    assert not np.array_equal(
        compute_statistics(real_trace, seed=2).load_resamples,
        compute_statistics(real_trace, seed=1).load_resamples,
    )


def test_resampled_loads_scatter_around_the_load(real_stats):
    load, resamples = real_stats.load, real_stats.load_resamples  # [L, N], [L, B, N]
    assert resamples.shape == (load.shape[0], 16, load.shape[1])
    total_ratio = resamples.sum(axis=2) / load.sum(axis=1, keepdims=True)  # Poisson(1): mean 1
    assert abs(total_ratio.mean() - 1) < 0.05 and total_ratio.std() > 0.01


def test_statistics_refuse_mismatched_merges(real_trace):
    stats = compute_statistics(real_trace.select_documents(np.arange(10)), seed=0)
    with pytest.raises(MoeplaceError, match="seeds"):
        stats + compute_statistics(real_trace.select_documents(np.arange(10)), seed=1)
    with pytest.raises(MoeplaceError, match="experts"):
        stats + compute_statistics(random_trace())


def test_load_skew_hand_case():
    skew = load_skew(np.array([0, 1, 1, 2, 6]))
    assert skew.max_mean == pytest.approx(3.0)
    assert skew.max_min == float("inf") and skew.dead == 1
    assert skew.top_decile_share == pytest.approx(0.6)
    assert skew.gini == pytest.approx((2 * np.arange(1, 6) - 6) @ np.array([0, 1, 1, 2, 6]) / (5 * 10))


def test_expert_load_equals_statistics_load(real_trace):
    from moeplace.calibrate.stats import expert_load

    np.testing.assert_array_equal(expert_load(real_trace), compute_statistics(real_trace, resamples=0).load)


def labelled_trace(seed=0, docs=24):
    """Random routing in documents labelled by kind: ``law/a``, ``law/b``, ``chat/x``, ``code``."""
    trace = random_trace(seed=seed, tokens=docs * 20, docs=docs)
    kinds = ["law/a", "law/b", "chat/x", "code"]
    labels = np.array([kinds[i % len(kinds)] for i in range(docs)])
    return dataclasses.replace(trace, doc_labels=labels)


def test_label_split_holds_out_exactly_the_matching_kinds():
    trace = labelled_trace()
    fit, held = split_by_label(trace, "law*,code")
    assert sorted(set(held.doc_labels)) == ["code", "law/a", "law/b"] and set(fit.doc_labels) == {"chat/x"}
    assert fit.num_tokens + held.num_tokens == trace.num_tokens
    assert held.num_documents == 18 and fit.num_documents == 6
    assert set(split_by_label(trace, "law/a")[1].doc_labels) == {"law/a"}
    with pytest.raises(MoeplaceError, match="no document label matches 'tax'; label groups here: law, chat"):
        split_by_label(trace, "tax")
    with pytest.raises(MoeplaceError, match="nothing is left to fit on"):
        split_by_label(trace, "*")
    assert split_by_label(trace, "*", keep_all=True)[1].num_documents == trace.num_documents


def test_label_resamples_draw_whole_kinds_of_traffic_from_the_calibration_trace():
    trace = labelled_trace()
    stats = compute_statistics(trace, resamples=8, seed=3, resample_by="labels")
    groups = trace.doc_groups
    assert list(dict.fromkeys(groups.tolist())) == ["law", "chat", "code"]
    weights = document_weights(trace, 0, trace.num_documents, 8, 3, "labels")
    for group in set(groups.tolist()):  # one draw per kind, shared by all its documents
        assert (weights[groups == group] == weights[groups == group][0]).all()
    assert len({tuple(weights[groups == g][0]) for g in set(groups.tolist())}) == 3
    # each resample's load is its kinds' loads weighted by their draws: calibration documents only
    per_group = {g: compute_statistics(trace.select_documents(np.flatnonzero(groups == g)), resamples=0).load
                 for g in set(groups.tolist())}  # fmt: skip
    for r in range(8):
        expected = sum(weights[groups == g][0, r] * load for g, load in per_group.items())
        np.testing.assert_array_equal(stats.load_resamples[:, r], expected)
    # a shard of whole documents draws the same: merged statistics are exact
    halves = (trace.select_documents(np.arange(0, 10)), trace.select_documents(np.arange(10, 24)))
    merged = sum((compute_statistics(h, resamples=8, seed=3, resample_by="labels") for h in halves[1:]),
                 compute_statistics(halves[0], resamples=8, seed=3, resample_by="labels"))  # fmt: skip
    np.testing.assert_array_equal(merged.load_resamples, stats.load_resamples)
    with pytest.raises(MoeplaceError, match="different seeds, units or counts"):
        stats + compute_statistics(trace, resamples=8, seed=3)
    with pytest.raises(MoeplaceError, match="resamples draw one of documents, labels"):
        compute_statistics(trace, resample_by="tokens")


def test_statistics_files_keep_what_their_resamples_drew(tmp_path):
    trace = labelled_trace()
    save_statistics(compute_statistics(trace, resamples=4, resample_by="labels"), tmp_path / "s.npz")
    assert load_statistics(tmp_path / "s.npz").resample_by == "labels"
    save_statistics(compute_statistics(trace, resamples=4), tmp_path / "d.npz")
    assert load_statistics(tmp_path / "d.npz").resample_by == "documents"

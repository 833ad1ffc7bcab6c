"""Locality diagnostics on hand-made traces with known answers, and the diagnose command."""

import json

import numpy as np
import pytest

from conftest import make_trace
from moeplace.calibrate.stats import gini
from moeplace.validators.locality.prefetch import document_halves, prefetch_hit_rates
from moeplace.validators.locality.structure import (
    clustering_gain,
    coactivation,
    coactivation_gini,
    shuffled,
    token_expert_matrix,
)

TEAMS = np.arange(16).reshape(4, 4)  # 16 experts in 4 teams that always fire together


def clustered(tokens=4000, seed=0):
    """Each token picks one whole team: all co-firing is inside teams."""
    return TEAMS[np.random.default_rng(seed).integers(0, 4, tokens)]


def independent(tokens=4000, seed=0):
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((tokens, 16)), axis=1)[:, :4]


def test_gini_of_known_values():
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 1.0])) == pytest.approx(0.75)  # one of n holds all: (n - 1) / n


def test_clustered_routing_has_gain_four_and_the_shuffle_null_kills_it():
    ids = clustered()
    chosen = token_expert_matrix(ids, 16)
    # inside: 6 pairs per token, 6 T; independence: sum over teams of 6 n_g^2 / T (n_g its tokens),
    # so gain = T^2 / sum n_g^2, 4 for equal teams
    team = np.bincount(ids[:, 0] // 4)
    assert clustering_gain(chosen, 4) == pytest.approx(len(ids) ** 2 / (team**2).sum())
    assert clustering_gain(chosen, 4) == pytest.approx(4.0, abs=0.01)
    null = shuffled(chosen, np.random.default_rng(0))
    np.testing.assert_array_equal(null.sum(axis=0), chosen.sum(axis=0))  # loads kept exactly
    assert clustering_gain(null, 4) == pytest.approx(1.0, abs=0.05)
    coact = coactivation(chosen)
    assert coactivation_gini(coact) == pytest.approx(1 - 24 / 120, abs=0.01)  # 24 of 120 pairs, equal


def test_independent_routing_has_no_gain():
    gain = clustering_gain(token_expert_matrix(independent(), 16), 4)
    # distinct top-k without replacement co-fire a little less than independent draws: k(k-1)/(N(N-1))
    # over (k/N)^2 = 0.8; clustering noise adds a little
    assert 0.75 < gain < 1.0


def test_document_halves():
    first, second = document_halves(np.array([0, 3, 7]))
    np.testing.assert_array_equal(first, [1, 1, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(second, ~first)


def test_prefetch_on_documents_that_stay_in_one_team():
    lengths = [40, 20, 20, 20]  # document d uses team d only; team 0 is the most frequent
    ids = np.concatenate([np.tile(TEAMS[d], (n, 1)) for d, n in enumerate(lengths)])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rates = prefetch_hit_rates(ids, offsets, 16, [4, 8])
    assert rates["coact"] == [1.0, 1.0]  # the team that just fired fires again
    # LFU names team 0 (then team 1, lowest ids on ties): scored pairs are second-half neighbours
    pairs = np.array([n // 2 - 1 for n in lengths])
    assert rates["lfu"][0] == pytest.approx(pairs[0] / pairs.sum())
    assert rates["lfu"][1] == pytest.approx(pairs[:2].sum() / pairs.sum())


@pytest.mark.slow
def test_diagnose_command_writes_the_report(tmp_path):
    from test_cli import run

    from moeplace.calibrate.trace_io import save_trace

    lengths = [60] * 12
    ids = np.stack([clustered(720, seed=1), independent(720, seed=2)], axis=1)  # layer 0 clustered
    save_trace(make_trace(ids, lengths, 16), tmp_path / "t.npz")
    result = run("diagnose", tmp_path / "t.npz", "--out", tmp_path / "d", "--groups", "4", "--devices", "4")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    structured, noise = report["layers"]
    assert structured["clustering_gain"] > 3 and noise["clustering_gain"] < 1.1
    assert structured["verdict"]["structure"].startswith("Experts fire in teams")
    assert noise["verdict"]["structure"].startswith("Little")
    assert structured["placement"]["reduction"] > 0.2 > noise["placement"]["reduction"]
    for name in ("report.md", "structure.png", "cache.png", "consistency.png"):
        assert (tmp_path / "d" / name).stat().st_size > 0
    assert "## Verdict" in (tmp_path / "d" / "report.md").read_text()


def test_quick_plan_raises_the_tolerance_to_the_balance_floor(tmp_path):
    from test_cli import run

    from moeplace.calibrate.trace_io import save_trace

    rest = 1 + np.argsort(np.random.default_rng(3).random((480, 1, 15)), axis=-1)[..., :3]
    hot = np.concatenate([np.zeros_like(rest[..., :1]), rest], -1)  # expert 0 on every token: floor 2
    save_trace(make_trace(hot, [40] * 12, 16), tmp_path / "t.npz")
    result = run("diagnose", tmp_path / "t.npz", "--out", tmp_path / "d", "--devices", "8")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["layers"][0]["placement"]["load_tolerance"] == 1.0

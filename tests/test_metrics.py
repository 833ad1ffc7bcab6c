import itertools
import math

import numpy as np
import pytest

from conftest import make_trace
from moeplace.planner.topology import Topology
from moeplace.validators.metrics import (
    balance_floor,
    device_load,
    devices_lower_bound,
    devices_per_token,
    load_cv,
    max_mean_load,
    random_expected_devices,
)
from moeplace.validators.score import score_placement


def test_devices_per_token_hand_case():
    expert_to_device = np.array([0, 0, 1, 1, 2, 2])
    topk = np.array([[0, 1, 2], [0, 2, 4], [5, 4, -1], [-1, -1, -1], [3, -1, 2]])
    np.testing.assert_array_equal(devices_per_token(topk, expert_to_device), [2, 3, 1, 0, 1])
    # padding must not wrap to the last expert's device
    np.testing.assert_array_equal(device_load(topk, expert_to_device, 3), [3, 4, 3])


def test_load_figures_hand_case():
    load = np.array([2, 4, 6])
    assert max_mean_load(load) == pytest.approx(1.5)
    assert load_cv(load) == pytest.approx(np.sqrt(8 / 3) / 4)
    assert max_mean_load(np.array([5, 5])) == 1.0 and load_cv(np.array([5, 5])) == 0.0


def test_balance_floor_and_lower_bound():
    assert balance_floor(np.array([10, 1, 1, 0]), 2) == pytest.approx(10 * 2 / 12)
    assert balance_floor(np.array([3, 3, 3, 3]), 2) == 1.0
    assert (
        devices_lower_bound(8, 8) == 1 and devices_lower_bound(6, 4) == 2 and devices_lower_bound(4, 1) == 4
    )


@pytest.mark.parametrize(("n", "d", "k"), [(4, 2, 2), (6, 3, 2), (8, 4, 3), (8, 2, 4), (9, 3, 3)])
def test_random_placement_closed_form_matches_enumeration(n, d, k):
    # By symmetry, a random placement on a fixed top-k set equals a fixed placement on a random set.
    placement = np.arange(n) // (n // d)
    sets = np.array(list(itertools.combinations(range(n), k)))
    assert random_expected_devices(n, d, k) == pytest.approx(devices_per_token(sets, placement).mean())
    assert random_expected_devices(n, d, k) == pytest.approx(
        d * (1 - math.comb(n - n // d, k) / math.comb(n, k))
    )


def test_score_averages_over_layers_and_ignores_empty_tokens():
    ids = np.array([[[0, 1], [0, 2]], [[2, 3], [1, 3]], [[-1, -1], [0, 1]]])  # [T=3, L=2, k=2]
    trace = make_trace(ids, [1, 2], num_experts=4)
    placement = np.array([[0, 0, 1, 1], [0, 1, 0, 1]])
    score = score_placement(np.argsort(placement, axis=1, kind="stable"), trace, Topology(4, 2))
    np.testing.assert_allclose(score.dev_per_token, [1.0, 4 / 3])  # layer 0: token 3 has no expert
    np.testing.assert_array_equal(score.device_load, [[2, 2], [3, 3]])
    assert score.headline.dev_per_token == pytest.approx((1 + 4 / 3) / 2)

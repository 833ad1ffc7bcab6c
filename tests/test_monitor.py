"""``moeplace monitor``: a served placement judged on recent traffic, from loads or traces."""

import dataclasses
import json

import numpy as np
import pytest

import moeplace
from conftest import random_trace, refused, run
from moeplace.calibrate.split import split_by_label
from moeplace.calibrate.stats_io import save_statistics
from moeplace.demo import demo_trace_path
from moeplace.validators.monitor import device_load, sampling_noise, watch

TRACE = demo_trace_path()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A placement fit on everything but GPQA and sorry-bench, those documents as drifted traffic
    (a trace, and load-only statistics of it), and its calibration documents."""
    d = tmp_path_factory.mktemp("monitor")
    fit, drifted = split_by_label(moeplace.load_trace(TRACE), "gpqa*,sorry*")
    topology = moeplace.Topology(fit.meta.num_experts, 8)
    stats = moeplace.compute_statistics(fit)
    options = moeplace.SolverOptions(load_tolerance=0.2)
    placement = moeplace.plan(stats, topology, "greedy-capped", options, fit.provenance())
    moeplace.save_placement(placement, d / "p.yaml")
    moeplace.save_trace(fit, d / "fit.npz")
    moeplace.save_trace(drifted, d / "drifted.npz")
    load_only = moeplace.compute_statistics(drifted, resamples=0)
    load_only = dataclasses.replace(load_only, coact=None, topk_sets=None)
    save_statistics(load_only, d / "drifted-load.npz")
    return d


@pytest.mark.slow
def test_the_calibration_traffic_keeps_the_placement(served):
    result = run("monitor", served / "p.yaml", served / "fit.npz", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["action"] == "keep" and report["passed"]
    assert report["max_mean_load"]["recent"] == pytest.approx(report["max_mean_load"]["calibration"])


@pytest.mark.slow
def test_drifted_traffic_asks_for_a_replan_when_colocation_still_pays(served):
    result = run("monitor", served / "p.yaml", served / "drifted.npz")
    assert result.exit_code == 1 and "re-plan with few moves (about 4 a layer)" in result.stdout
    assert f"--from {served / 'p.yaml'} --max-moves 4" in result.stdout


@pytest.mark.slow
def test_load_records_alone_say_what_they_cannot_tell(served):
    result = run("monitor", served / "p.yaml", served / "drifted-load.npz", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["action"] == "rebalance" and report["reduction"] is None
    assert "hold load only" in report["verdict"]
    assert report["max_mean_load"]["rebalanced"] < report["max_mean_load"]["recent"]
    loose = run("monitor", served / "p.yaml", served / "drifted-load.npz", "--max-load-ratio", 10)
    assert loose.exit_code == 0 and "keep this placement" in loose.stdout


@pytest.mark.slow
def test_a_replicated_expert_shares_its_load_evenly_and_bad_records_are_refused(served, tmp_path):
    fit = moeplace.load_trace(served / "fit.npz")
    topology = moeplace.Topology(fit.meta.num_experts, 8, redundant_slots=8)
    placement = moeplace.plan(moeplace.compute_statistics(fit), topology, "eplb")
    load = placement.calibration_load
    per_device = device_load(placement, load)
    np.testing.assert_allclose(per_device.sum(axis=1), load.sum(axis=1))  # nothing lost or counted twice
    slots = placement.physical_to_logical[0]
    copies = np.bincount(slots, minlength=fit.meta.num_experts)
    expected = np.bincount(np.arange(slots.shape[0]) // 5, weights=load[0][slots] / copies[slots])
    np.testing.assert_allclose(per_device[0], expected)
    with pytest.raises(moeplace.MoeplaceError, match="no expert activations"):
        watch(placement, np.zeros_like(load), [])
    moeplace.save_trace(random_trace(), tmp_path / "other.npz")
    refused(run("monitor", served / "p.yaml", tmp_path / "other.npz"), tmp_path / "other.npz", "16 experts")


def test_a_small_record_of_calibration_traffic_is_not_called_drift(served):
    placement = moeplace.load_placement(served / "p.yaml")
    load = placement.calibration_load
    calibration = watch(placement, load, []).calibration
    huge = sampling_noise(placement, np.full(len(placement.layers), 10**9))
    small = sampling_noise(placement, np.full(len(placement.layers), 2000))
    np.testing.assert_allclose(huge, calibration, atol=2e-3)  # a big enough record shows calibration
    assert (small > huge).all()
    rng = np.random.default_rng(1)  # an hour of the calibration traffic, 2,000 activations a layer
    hour = np.stack([rng.multinomial(2000, row / row.sum()) for row in load])
    assert watch(placement, hour, []).action == "keep"
    assert watch(placement, hour, [], max_load_ratio=float(calibration.mean()) + 0.01).action != "keep"

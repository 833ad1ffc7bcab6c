"""``moeplace profile`` and ``moeplace bench``: two ranks on CPU (gloo) under torchrun, started and
stopped by the tests; the refusal without torchrun; no process left after a failure or Ctrl-C;
and the bench's bookkeeping checked against the step model's own replay."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from moeplace.calibrate.split import split_documents
from moeplace.calibrate.trace_io import load_trace
from moeplace.cli import main
from moeplace.demo import demo_trace_path
from moeplace.planner.solvers import SolverOptions
from moeplace.validators.bench import (
    candidates,
    local_slots,
    predicted_cost,
    rank_work,
    select_steps,
    served_ranks,
)
from moeplace.validators.hardware import fit_all_to_all
from moeplace.validators.profile import load_profile
from moeplace.validators.step import FIGURES, Workload, step_cost

torch = pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
TINY_PROFILE = ["--hidden", "128", "--intermediate", "32", "--max-tokens", "16", "--weight-mib", "4"]
TINY_BENCH = ["--layers", "2", "--max-steps", "2", "--repeats", "2", "--tokens-per-rank", "32"]


def torchrun(*args, **kwargs) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m moeplace.cli ARGS`` in a session of its own
    (a free rendezvous port each: tests may run side by side)."""
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "moeplace.cli", *map(str, args)]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        **kwargs,
    )


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, str, set[int]]:
    """Wait for ``process`` (killing its session past ``timeout``); its exit code, output, and the
    processes it started (workers sit in sessions of their own: followed by parentage)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    parent = psutil.Process(process.pid)
    while process.poll() is None and time.monotonic() < deadline:
        seen |= _descendants(parent)
        time.sleep(0.05)
    if process.poll() is None:
        _kill_all(process, seen)
        pytest.fail(f"still running after {timeout} s")
    stdout, stderr = process.communicate()
    return process.returncode, stdout, stderr, seen


def _descendants(parent) -> set[int]:
    try:
        return {child.pid for child in parent.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _kill_all(process: subprocess.Popen, pids: set[int]) -> None:
    for pid in pids | {process.pid}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.communicate()


def alive(pids: set[int]) -> list[int]:
    """The ``pids`` still running (zombies count as gone)."""
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            pass
    return living


@pytest.fixture(scope="module")
def measured_profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "cpu.yaml"
    code, _stdout, stderr, _ = finish(torchrun("profile", "--out", path, *TINY_PROFILE), 120)
    assert code == 0, stderr
    return path


def test_refused_without_torchrun(tmp_path, monkeypatch, capsys):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for command in (
        ["profile", "--out", tmp_path / "p.yaml"],
        ["bench", demo_trace_path(), "--profile", "x"],
    ):
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in command])
        errors = capsys.readouterr().err.strip().splitlines()
        assert exited.value.code == 2
        assert len(errors) == 1 and "torchrun --standalone --nproc-per-node 2" in errors[0], errors
    assert not (tmp_path / "p.yaml").exists()


def test_all_to_all_fit():
    points = [(size, 100e-6 + size / 2e9) for size in (1 << 10, 1 << 16, 1 << 20)]  # 2 GB/s, 100 us
    bandwidth, latency = fit_all_to_all(points, 2)
    assert bandwidth == pytest.approx(2.0) and latency == pytest.approx(100.0)
    assert fit_all_to_all([(1000, 2e-6), (2000, 1e-6)], 2) == (pytest.approx(2000 / 1e-6 / 1e9), 0.0)


@pytest.fixture(scope="module")
def demo_split():
    return split_documents(load_trace(demo_trace_path()), 0.5, 0)


@pytest.mark.slow
def test_predicted_cost_is_the_step_models(demo_split):
    """Over every full step, the bench's counts are ``step_cost``'s (no replicas: the same ranks)."""
    fit, held = demo_split
    workload = Workload("prefill", 256, 32, "rank")
    frequency = candidates(fit, 2, 0, "greedy-capped", SolverOptions(), 0)[0]
    steps = select_steps(held, 2, workload, 10**6)
    ids = np.asarray(held.topk_ids[steps.tokens])
    cost = predicted_cost(served_ranks(frequency, ids), ids, steps, frequency.topology)
    reference = step_cost(frequency.physical_to_logical, held, frequency.topology, workload)
    assert cost.steps == reference.steps and cost.batch == reference.batch
    for figure in FIGURES:
        np.testing.assert_allclose(cost.straggler[figure], reference.straggler[figure])
        np.testing.assert_allclose(cost.mean[figure], reference.mean[figure])


@pytest.mark.slow
def test_rank_work_moves_every_pair_once(demo_split):
    """Each rank sends what the other receives, and computes exactly the pairs served on it."""
    fit, held = demo_split
    workload = Workload("prefill", 64, 32, "rank")
    steps = select_steps(held, 2, workload, 3)
    ids = np.asarray(held.topk_ids[steps.tokens])[:, :3]
    bounds = steps.bounds()
    for candidate in candidates(fit, 2, 2, "greedy-capped", SolverOptions(), 0):
        served = served_ranks(candidate, ids)
        spd = candidate.topology.slots_per_device
        for s in range(steps.count):
            lo, hi = bounds[s], bounds[s + 1]
            for layer in range(ids.shape[1]):
                slots = local_slots(candidate.physical_to_logical[layer], candidate.topology)
                works = [
                    rank_work(served[layer, lo:hi], ids[lo:hi, layer], steps.source[lo:hi], r, slots, spd)
                    for r in range(2)
                ]
                for r, work in enumerate(works):
                    assert work.batch == workload.tokens_per_rank
                    assert [w.send_counts[r] for w in works] == work.receive_counts.tolist()
                    assert work.pair_rows.size == (served[layer, lo:hi] == r).sum()
                    assert work.slot_offsets[-1] == work.pair_rows.size
                    assert work.pair_rows.max(initial=-1) < work.receive_counts.sum()


@pytest.mark.slow
def test_profile_writes_a_loadable_profile(measured_profile):
    profile = load_profile(str(measured_profile))
    assert profile.tflops > 0 and profile.hbm_tbps > 0 and profile.efficiency == 1.0
    assert all(bw > 0 for table in (profile.nvlink, profile.rdma) for pair in table.values() for bw in pair)
    assert [tokens for tokens, _ in profile.gemm] == [1, 4, 16]
    assert all(tflops > 0 for _, tflops in profile.gemm) and profile.layer_overhead_us >= 0
    assert "not measured" in profile.sources["rdma"]


@pytest.mark.slow
def test_bench_prints_every_placement(measured_profile):
    args = ["bench", demo_trace_path(), "--profile", measured_profile, *TINY_BENCH]
    code, stdout, stderr, workers = finish(torchrun(*args, "--json"), 120)
    assert code == 0, stderr
    result = json.loads(stdout)
    labels = [row["placement"] for row in result["placements"]]
    assert labels == ["frequency", "eplb", "greedy-capped", "eplb R=2", "greedy-capped R=2"]
    for row in result["placements"]:
        figures = [row["measured_ms"], row["predicted_ms"], row["speedup"], row["predicted_speedup"]]
        assert all(np.isfinite(figures)) and row["measured_ms"] > 0 and row["predicted_ms"] > 0
        assert len(row["measured_ms_runs"]) == 2
    assert result["steps"] == 2 and result["layers"] == 2 and any("scaled down" in n for n in result["notes"])
    assert not alive(workers)
    code, stdout, stderr, _ = finish(torchrun(*args), 120)  # the tables, once (rank 0 only)
    assert code == 0, stderr
    assert stdout.count("greedy-capped R=2: speedup measured") == 1 and "predicted" in stdout


@pytest.mark.slow
def test_a_failure_stops_both_ranks(tmp_path, measured_profile):
    args = ["bench", tmp_path / "missing.npz", "--profile", measured_profile, *TINY_BENCH]
    code, _stdout, stderr, workers = finish(torchrun(*args), 60)
    assert code != 0 and "missing.npz" in stderr
    assert stderr.count("error:") == 1  # rank 0's line; rank 1 is silent
    time.sleep(0.5)
    assert not alive(workers)


@pytest.mark.slow
def test_ctrl_c_stops_every_process(measured_profile):
    args = [
        "bench",
        demo_trace_path(),
        "--profile",
        measured_profile,
        "--max-steps",
        "200",
        "--repeats",
        "50",
    ]
    process = torchrun(*args)
    parent, workers, deadline = psutil.Process(process.pid), set(), time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:  # both ranks started
        workers |= _descendants(parent)
        time.sleep(0.1)
    time.sleep(8)  # into the measuring
    workers |= _descendants(parent)
    start = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the foreground group
    code, _, stderr, rest = finish(process, 25)
    assert time.monotonic() - start < 20 and code != 0
    time.sleep(0.5)
    assert not alive(workers | rest), stderr

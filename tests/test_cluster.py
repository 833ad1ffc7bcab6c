"""The Dask backend: a local cluster the tests start and stop gives the same bytes as one machine."""

import pytest

distributed = pytest.importorskip("distributed")

from conftest import run
from moeplace.calibrate.split import split_documents
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.stats_io import save_statistics
from moeplace.calibrate.trace_io import load_trace, save_trace
from moeplace.demo import demo_trace_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scheduler():
    """A running cluster of two worker processes, reached by address as a real one would be."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The demo trace in two shards, as two machines would record it."""
    root = tmp_path_factory.mktemp("shards")
    first, second = split_documents(load_trace(demo_trace_path()), 0.5, 0)
    save_trace(first, root / "a.npz")
    save_trace(second, root / "b.npz")
    return root / "a.npz", root / "b.npz"


@pytest.mark.parametrize("options", [(), ("--redundant-slots", 8, "--nodes", 2)])
def test_a_plan_on_the_cluster_is_the_same_bytes_as_on_one_machine(scheduler, shards, tmp_path, options):
    args = ("plan", shards[0], "--devices", 8, "--load-tolerance", 0.1, *options)
    assert run(*args, "--jobs", 1, "--out", tmp_path / "here.yaml").exit_code == 0
    result = run(*args, "--cluster", scheduler, "--out", tmp_path / "there.yaml")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "there.yaml").read_bytes() == (tmp_path / "here.yaml").read_bytes()


def test_statistics_of_shards_on_the_cluster_are_the_same_bytes(scheduler, shards, tmp_path):
    here = run("merge", *shards, "--cluster", "local", "--out", tmp_path / "local.npz")
    assert here.exit_code == 0, here.output
    there = run("merge", *shards, "--cluster", scheduler, "--out", tmp_path / "there.npz")
    assert there.exit_code == 0, there.output
    # on one machine: any statistics input makes merge sum statistics
    save_statistics(compute_statistics(load_trace(shards[1])), tmp_path / "b.stats.npz")
    one = run("merge", shards[0], tmp_path / "b.stats.npz", "--out", tmp_path / "one.npz")
    assert one.exit_code == 0, one.output
    expected = (tmp_path / "one.npz").read_bytes()
    assert (tmp_path / "there.npz").read_bytes() == expected == (tmp_path / "local.npz").read_bytes()


def test_an_unreachable_scheduler_is_a_clear_error(shards, tmp_path):
    result = run(
        "plan", shards[0], "--devices", 4, "--cluster", "tcp://127.0.0.1:9", "--out", tmp_path / "p.yaml"
    )
    assert result.exit_code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.stderr
    assert not (tmp_path / "p.yaml").exists()

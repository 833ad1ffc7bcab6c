"""``--json``: every command that reports prints exactly one JSON object on stdout (nothing else
there), with the keys docs/files.md lists; errors and progress stay on stderr."""

from __future__ import annotations

import json

import pytest

from conftest import random_trace, run
from moeplace.calibrate.trace_io import save_trace


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("json")
    save_trace(random_trace(seed=1, tokens=800, docs=16), d / "fit.npz")
    save_trace(random_trace(seed=2, tokens=800, docs=16), d / "held.npz")
    return d


def one_object(result) -> dict:
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)  # the whole of stdout: one object, nothing around it


def test_stats_plan_validate_monitor_print_one_object(files):
    stats = one_object(run("stats", files / "fit.npz", "--json"))
    assert stats["tokens"] == 800 and len(stats["layers"]) == 2 and "max_mean" in stats["layers"][0]
    plan = one_object(run("plan", files / "fit.npz", "--devices", 4, "--holdout", files / "held.npz",
                          "--json", "--out", files / "p.yaml"))  # fmt: skip
    assert plan["placement"] == str(files / "p.yaml") and plan["passed"] and plan["failures"] == []
    assert plan["validation"]["holdout"]["in_sample"] is False and "fit_dev_per_token" in plan["fit"]
    validate = one_object(run("validate", files / "p.yaml", files / "held.npz", "--json"))
    assert {"dev_per_token", "reduction", "passed", "layers"} <= set(validate)
    monitor = one_object(run("monitor", files / "p.yaml", files / "held.npz", "--json"))
    assert "passed" in monitor


@pytest.mark.slow
def test_compare_and_diagnose_print_one_object(files):
    solvers = "frequency,greedy-capped"
    compare = one_object(run("compare", files / "fit.npz", "--devices", 4, "--solvers", solvers,
                             "--jobs", 1, "--json", "--out", files / "c"))  # fmt: skip
    assert {row["solver"] for row in compare["rows"]} == {"frequency", "greedy-capped"}
    assert compare["passed"] and set(compare["files"]) >= {"md", "csv"}
    diagnose = one_object(run("diagnose", files / "fit.npz", "--devices", 4, "--json", "--out", files / "d"))
    assert "overall" in diagnose and "report.json" in diagnose["files"]

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import moeplace
from conftest import read_sglang_map, refused
from moeplace.cli import app
from moeplace.demo import demo_trace_path
from moeplace.planner.placement import load_placement

runner = CliRunner()
TRACE = str(demo_trace_path())


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    result = run(
        "split",
        TRACE,
        "--holdout-share",
        0.5,
        "--seed",
        0,
        "--fit-out",
        d / "fit.trace",
        "--holdout-out",
        d / "held.npz",
    )
    assert result.exit_code == 0, result.output
    return d / "fit.trace", d / "held.npz"


@pytest.fixture(scope="module")
def planned(split_files, tmp_path_factory):
    fit, held = split_files
    out = tmp_path_factory.mktemp("plan") / "p.yaml"
    result = run(
        "plan",
        fit,
        "--devices",
        4,
        "--solver",
        "greedy-capped",
        "--load-tolerance",
        0.1,
        "--holdout",
        held,
        "--out",
        out,
        "--jobs",
        1,
    )
    assert result.exit_code == 0, result.output
    assert "best lower bound 1.000" in result.output  # ceil(4 / 8 slots): one device a token
    return out


@pytest.mark.slow
def test_split_is_reproducible(split_files, tmp_path):
    result = run(
        "split", TRACE, "--seed", 0, "--fit-out", tmp_path / "f.npz", "--holdout-out", tmp_path / "h.npz"
    )
    assert result.exit_code == 0
    assert (tmp_path / "h.npz").read_bytes() == split_files[1].read_bytes()


def test_stats_prints_sizes_and_skew():
    result = run("stats", TRACE)
    assert result.exit_code == 0
    assert "tokens 71244" in result.output and "top-k 4" in result.output and "Gini" in result.output


@pytest.mark.slow
def test_plan_records_held_out_figures(planned):
    placement = load_placement(planned)
    v = placement.validation
    assert placement.solver == "greedy-capped" and placement.num_devices == 4
    assert v["reduction"] == pytest.approx(1 - v["dev_per_token"] / v["baseline"]["dev_per_token"])
    assert v["holdout"]["documents"] == 118


@pytest.mark.slow
def test_plan_past_the_set_budget_samples_sets_and_says_so(split_files, tmp_path):
    out = tmp_path / "p.yaml"
    args = ("plan", split_files[0], "--devices", 4, "--solver", "refine", "--search-steps", 0, "--jobs", 1)
    result = run(*args, "--set-tokens", 10_000, "--out", out)
    assert result.exit_code == 0, result.output
    rate = load_placement(out).calibration["set_sample_rate"]
    assert 0.2 < rate < 0.4 and f"top-k sets sampled at rate {rate:.3g}" in result.output
    exact = run(*args, "--out", tmp_path / "exact.yaml")
    assert "sampled" not in exact.output and "set_sample_rate" not in (tmp_path / "exact.yaml").read_text()


@pytest.mark.slow
def test_validate_json_and_passing_gate(planned, split_files):
    result = run(
        "validate", planned, split_files[1], "--json", "--max-load-ratio", 1.5, "--min-reduction", 0.05
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("dev_per_token", "load_cv", "max_mean_load", "reduction"):
        assert isinstance(report[key], float) and isinstance(report["baseline"][key], float)
    assert report["passed"] is True and len(report["layers"]) == 24
    assert {"dev_per_token", "baseline_dev_per_token", "baseline_load_cv", "baseline_max_mean_load"} <= set(
        report["layers"][0]
    )
    assert report["dev_per_token"] == pytest.approx(load_placement(planned).validation["dev_per_token"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("gate", "reason"), [(("--max-load-ratio", 1.0), "exceeds"), (("--min-reduction", 0.9), "below")]
)
def test_failed_gate_exits_1_and_says_why(planned, split_files, gate, reason):
    result = run("validate", planned, split_files[1], *gate)
    assert result.exit_code == 1
    assert "gate failed" in result.stderr and reason in result.stderr


@pytest.mark.slow
def test_baseline_refit_from_fit_trace_matches_recorded_loads(planned, split_files):
    a = json.loads(run("validate", planned, split_files[1], "--json").stdout)
    b = json.loads(run("validate", planned, split_files[1], "--json", "--fit", split_files[0]).stdout)
    assert a["baseline"] == b["baseline"]


@pytest.mark.slow
def test_validate_on_calibration_data_is_refused_unless_allowed(planned, split_files):
    refused(run("validate", planned, split_files[0]), split_files[0], "are calibration documents")
    result = run("validate", planned, split_files[0], "--allow-overlap")
    assert result.exit_code == 0 and "IN-SAMPLE" in result.stdout


@pytest.mark.slow
def test_incompatible_trace_is_a_clear_error(planned, tmp_path):
    from conftest import random_trace
    from moeplace.calibrate.trace_io import save_trace

    save_trace(random_trace(), tmp_path / "other.npz")
    result = run("validate", planned, tmp_path / "other.npz")
    assert result.exit_code == 2
    assert "other.npz" in result.stderr and "16 experts" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("plan", "missing.npz", "--devices", 4, "--out", "x.yaml"), "no such file"),
        (("plan", TRACE, "--devices", 3, "--out", "x.yaml"), "--devices 3 does not divide"),
        (("plan", TRACE, "--devices", 0, "--out", "x.yaml"), "--devices must be at least 1, got 0"),
        (
            ("plan", TRACE, "--devices", 4, "--redundant-slots", 2, "--out", "x.yaml"),
            "--redundant-slots 2 must",
        ),
        (("plan", TRACE, "--devices", 4, "--nodes", 3, "--out", "x.yaml"), "--nodes 3 must"),
        (("compare", TRACE, "--devices", "2,x", "--out", "o"), "comma-separated"),
        (
            ("split", TRACE, "--holdout-share", 1.0, "--fit-out", "a.npz", "--holdout-out", "b.npz"),
            "--holdout-share must be between 0 and 1",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.slow
def test_compare_writes_table_csv_and_plot_the_same_bytes_each_run(tmp_path):
    def compare(out):
        args = ("--devices", "2,4", "--solvers", "frequency,greedy-capped", "--load-tolerance", 0.1)
        result = run("compare", TRACE, *args, "--out", out, "--jobs", 1)
        assert result.exit_code == 0, result.output
        return result

    result = compare(tmp_path / "a")
    assert "plan time (s)" in result.output  # printed, not written: files must not depend on the clock
    table = (tmp_path / "a" / "comparison.md").read_text()
    assert "| 4 | greedy-capped |" in table and "reduction vs frequency" in table
    rows = (tmp_path / "a" / "comparison.csv").read_text().splitlines()
    assert rows[0].startswith("devices,solver,redundant_slots,load_tolerance,dev_per_token,reduction")
    assert len(rows) == 5
    assert (tmp_path / "a" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compare(tmp_path / "b")
    for name in ("comparison.md", "comparison.csv", "comparison.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    result = run("demo", "--out", tmp_path, "--time-limit", 0.05, "--search-steps", 20)
    assert result.exit_code == 0, result.output
    placements = sorted((tmp_path / "placements").glob("*.yaml"))
    assert len(placements) == 18
    for path in placements:
        placement = load_placement(path)
        assert placement.validation["holdout"]["documents"] == 118
        np.testing.assert_array_equal(
            np.bincount(placement.expert_to_device[0]),
            np.full(placement.num_devices, 32 // placement.num_devices),
        )
    assert {p.name for p in tmp_path.iterdir()} >= {
        "fit.npz",
        "holdout.npz",
        "comparison.md",
        "comparison.png",
    }
    assert "passed" in result.output
    table = read_sglang_map(tmp_path / "sglang-init-expert-location.json")
    gated = load_placement(tmp_path / "placements" / "greedy-capped-D8.yaml")
    np.testing.assert_array_equal(table, gated.physical_to_logical)


def entry_point(*args):
    """The ``moeplace`` entry point in a new process, as a user runs it."""
    command = [sys.executable, "-m", "moeplace.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.mark.slow
def test_console_script_is_installed():
    result = entry_point("--help")
    assert result.returncode == 0 and "validate" in result.stdout
    version = entry_point("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"moeplace {moeplace.__version__}"


def test_a_bad_choice_is_one_line_naming_the_option(tmp_path):
    result = entry_point("plan", TRACE, "--devices", 4, "--solver", "magic", "--out", tmp_path / "x.yaml")
    assert result.returncode == 2 and not (tmp_path / "x.yaml").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'--solver'" in lines[0] and "'magic' is not one of" in lines[0], lines


@pytest.mark.slow
def test_python_api_example_runs():
    example = Path(__file__).parent.parent / "examples" / "plan_and_validate.py"
    result = subprocess.run([sys.executable, str(example), "--devices", "4"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["frequency", "greedy", "greedy-capped"]


@pytest.mark.slow
def test_deploy_example_gates_saves_and_exports(tmp_path):
    example = Path(__file__).parent.parent / "examples" / "deploy_sglang.py"
    result = subprocess.run(
        [sys.executable, str(example), "--devices", "4", "--out", tmp_path], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    saved = load_placement(tmp_path / "placement.yaml")
    assert saved.validation["reduction"] > 0 and "--ep-size 4" in result.stdout
    np.testing.assert_array_equal(
        read_sglang_map(tmp_path / "expert_location.json"), saved.physical_to_logical
    )


@pytest.mark.slow
def test_python_api_keeps_validation_through_save_and_load(tmp_path):
    fit, held = moeplace.split_documents(moeplace.load_trace(TRACE), holdout_share=0.5)
    stats = moeplace.compute_statistics(fit)
    placement = moeplace.plan(stats, moeplace.Topology(stats.meta.num_experts, 4), "frequency")
    validation = moeplace.validate(placement, held)
    moeplace.save_placement(validation.recorded_placement(), tmp_path / "p.yaml")
    loaded = moeplace.load_placement(tmp_path / "p.yaml")
    assert loaded.validation == validation.summary()
    np.testing.assert_array_equal(loaded.expert_to_device, placement.expert_to_device)
    with pytest.raises(AttributeError):
        moeplace.no_such_name  # noqa: B018


def test_baseline_refit_needs_a_matching_fit_trace(planned, split_files, tmp_path):
    from conftest import random_trace
    from moeplace.calibrate.trace_io import save_trace

    save_trace(random_trace(), tmp_path / "other.npz")
    result = run("validate", planned, split_files[1], "--fit", tmp_path / "other.npz")
    assert result.exit_code == 2 and "other.npz" in result.stderr and "16 experts" in result.stderr


def test_messages_print_brackets_verbatim(tmp_path):
    weird = tmp_path / "[bold]trace[x].npz"
    result = run("stats", weird)
    assert result.exit_code == 2 and "[bold]trace[x].npz" in result.stderr


@pytest.mark.slow
def test_progress_in_a_log_says_something_at_least_every_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["moeplace.cli.progress"], "LOG_EVERY", 0.01)
    result = run(
        "plan", TRACE, "--devices", 4, "--solver", "greedy", "--out", tmp_path / "p.yaml", "--jobs", 1
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("greedy, D=4: ")]
    assert lines and all(line.split(": ")[1].split()[0].endswith("/24") for line in lines)


HEAVY = ("ortools", "scipy", "mtkahypar", "torch", "matplotlib", "pandas")


@pytest.mark.slow
@pytest.mark.parametrize("command", [["--help"], ["stats", TRACE], ["--version"]])
def test_light_commands_load_no_heavy_library(command):
    script = (
        "import sys\nfrom moeplace.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr


@pytest.mark.slow
def test_fit_on_some_kinds_of_traffic_and_score_on_another(tmp_path):
    fit, held = tmp_path / "fit.npz", tmp_path / "held.npz"
    result = run("split", TRACE, "--holdout-label", "gpqa*", "--fit-out", fit, "--holdout-out", held)
    assert result.exit_code == 0, result.output
    held_trace = moeplace.load_trace(held)
    assert {label.split("/")[0] for label in held_trace.doc_labels} == {
        "gpqa_diamond",
        "gpqa_extended",
        "gpqa_main",
    }
    assert not any(label.startswith("gpqa") for label in moeplace.load_trace(fit).doc_labels)
    out = tmp_path / "p.yaml"
    args = ("--devices", 4, "--resample-by", "labels", "--load-tolerance", 0.2, "--jobs", 1)
    result = run("plan", fit, *args, "--out", out)
    assert result.exit_code == 0, result.output
    assert moeplace.load_placement(out).options["load_resamples_by"] == "labels"
    whole = json.loads(run("validate", out, TRACE, "--json", "--allow-overlap").stdout)
    gpqa = json.loads(run("validate", out, TRACE, "--json", "--label", "gpqa*").stdout)
    assert gpqa["holdout"]["tokens"] == held_trace.num_tokens < whole["holdout"]["tokens"]
    assert "no document label matches 'nope'" in run("validate", out, TRACE, "--label", "nope").stderr

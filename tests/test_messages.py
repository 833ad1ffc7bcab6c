"""Errors name what the user typed: the flag (CLI) or the parameter (Python), the file once, the
closest known name, and which argument goes where."""

from __future__ import annotations

import pytest

import moeplace
from conftest import random_trace, refused, run
from moeplace.calibrate.trace_io import save_trace


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("messages")
    save_trace(random_trace(seed=1), d / "fit.npz")
    save_trace(random_trace(seed=2), d / "held.npz")
    assert run("plan", d / "fit.npz", "--devices", 4, "--out", d / "p.yaml").exit_code == 0
    return d


def test_arguments_in_the_wrong_order_say_which_goes_where(files):
    for command in ("validate", "monitor"):
        error = refused(
            run(command, files / "held.npz", files / "p.yaml"), None, "arguments in the wrong order"
        )
        assert f"{command} takes the placement YAML first" in error


def test_a_missing_file_is_named_once(files):
    error = refused(run("validate", files / "p.yaml", files / "held.npz", "--fit", files / "fit.trac"))
    assert error.count("fit.trac") == 1 and "no such file" in error


def test_a_mistyped_name_gets_the_closest_known_one(files, capsys):
    from moeplace.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["plan", str(files / "fit.npz"), "--devices", "4", "--solver", "greedy_capped",
              "--out", str(files / "x.yaml")])  # fmt: skip
    assert exited.value.code == 2
    assert "(did you mean 'greedy-capped'?)" in capsys.readouterr().err
    refused(run("compare", files / "fit.npz", "--solvers", "refin", "--out", files / "c"), None, "'refine'?")
    stats = moeplace.compute_statistics(moeplace.load_trace(files / "fit.npz"))
    with pytest.raises(moeplace.MoeplaceError, match="did you mean 'hypergraph'"):
        moeplace.plan(stats, moeplace.Topology(16, 4), "hypergrahp")


def test_a_refused_value_names_its_flag_for_cli_users_and_its_parameter_for_python(files):
    refused(
        run("plan", files / "fit.npz", "--devices", 0, "--out", files / "x.yaml"), None, "--devices must be"
    )
    with pytest.raises(moeplace.MoeplaceError, match=r"^num_devices must be at least 1, got 0$"):
        moeplace.Topology(16, 0)
    refused(run("plan", files / "fit.npz", "--devices", 4, "--load-tolerance", "0.05,0.1", "--out",
                files / "x.yaml"), None, "--load-tolerance takes one value here")  # fmt: skip


def test_a_vllm_request_that_repeats_an_expert_names_the_file_and_line(tmp_path):
    (tmp_path / "out.jsonl").write_text('{"routed_experts": [[[0, 1]], [[2, 2]]]}\n')
    result = run("import", "vllm", tmp_path / "out.jsonl", "--num-experts", 4, "--out", tmp_path / "t.npz")
    error = refused(result, "out.jsonl", "selects one expert twice")
    assert "line 1" in error and not (tmp_path / "t.npz").exists()


def test_the_figures_say_what_they_are(files):
    from moeplace.cli.planning import _recovered

    shown = run("validate", files / "p.yaml", files / "held.npz")
    assert "no placement goes below 1 (top-k over experts a device)" in shown.stdout  # not "lower bound 1"
    watched = run("monitor", files / "p.yaml", files / "held.npz")
    assert "noise" in watched.stdout and "this size" not in watched.stdout
    assert "records as small as the recent ones" in " ".join(watched.stdout.split())
    assert _recovered(1.2, 1.2, 1.3, "robust from scratch", "balance") == (
        "nothing of robust from scratch's balance: it gains none over the served placement"
    )
    assert (
        _recovered(1.4, 1.3, 1.2, "robust from scratch", "balance")
        == "50% of robust from scratch's balance gain"
    )


def test_unknown_model_sizes_name_the_flags_that_give_them(files):
    from moeplace.validators.profile import shape_of

    refused(run("validate", files / "p.yaml", files / "held.npz", "--step", "prefill"), None,
            "give --model-config (its config.json), or --hidden and --intermediate")  # fmt: skip
    with pytest.raises(moeplace.MoeplaceError, match=r"give model_config .*, or hidden and intermediate"):
        shape_of("test/tiny")

"""Every numeric option of every command, at 0, -1, NaN, 1e30 and 2^70: refused in one line that
names the flag (exit 2), or accepted and run (exit 0, or 1 for a gate). The options are read off
the commands themselves, so an option added later is covered without a new test."""

from __future__ import annotations

import pytest
import typer

from conftest import random_trace, run
from moeplace.calibrate.trace_io import save_trace
from moeplace.cli import app, main

VALUES = ("0", "-1", "nan", "1e30", str(2**70))
# each command with arguments that run; the option under test is added or replaced
COMMANDS = {
    "plan": ["plan", "{d}/fit.npz", "--devices", "4", "--jobs", "1", "--out", "{d}/o.yaml"],
    "validate": ["validate", "{d}/p.yaml", "{d}/held.npz"],
    "compare": ["compare", "{d}/fit.npz", "--devices", "4", "--solvers", "frequency", "--out", "{d}/c"],
    "split": ["split", "{d}/fit.npz", "--fit-out", "{d}/f.npz", "--holdout-out", "{d}/h.npz"],
    "monitor": ["monitor", "{d}/p.yaml", "{d}/held.npz"],
    "diagnose": ["diagnose", "{d}/fit.npz", "--out", "{d}/dg"],
    "export": [
        "export",
        "{d}/p.yaml",
        "--format",
        "sglang",
        "--num-hidden-layers",
        "2",
        "--out",
        "{d}/e.json",
    ],
    "merge": ["merge", "{d}/fit.npz", "{d}/held.npz", "--out", "{d}/m.npz"],
    "import": ["import", "npz", "{d}/fit.npz", "--out", "{d}/i.npz"],
}
# calibrate runs a model: tests/test_calibrate_cli.py tries its options on a tiny one; demo's options
# are plan's and compare's (a run of it takes a minute a value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("values")
    save_trace(random_trace(seed=1, tokens=400, docs=8), d / "fit.npz")
    save_trace(random_trace(seed=2, tokens=400, docs=8), d / "held.npz")
    assert run("plan", d / "fit.npz", "--devices", 4, "--out", d / "p.yaml").exit_code == 0
    return d


def numeric_flags(command: str) -> list[str]:
    params = typer.main.get_command(app).commands[command].params
    return [
        max(p.opts, key=len)
        for p in params
        if p.param_type_name == "option" and not p.is_flag and str(p.bare_type()) in ("int", "float")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_numeric_option_refuses_in_one_line_or_runs(command, folder, capsys):
    base = [a.format(d=folder) for a in COMMANDS[command]]
    assert not offending_values(base, capsys)


def offending_values(base: list[str], capsys) -> list[tuple]:
    """Run ``base`` (a command line that runs) with each numeric option of its command set to each
    of ``VALUES``; return the runs that neither ran (exit 0, or 1 for a gate) nor were refused in
    one line naming the flag (exit 2)."""
    flags = numeric_flags(base[0])
    assert flags, base[0]
    offenders = []
    for flag in flags:
        for value in VALUES:
            args = list(base)
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
            with pytest.raises(SystemExit) as exited:
                main(args)
            code, errors = exited.value.code, capsys.readouterr().err.strip().splitlines()
            named = len(errors) == 1 and errors[0].startswith("error:") and flag in errors[0]
            if not (code in (0, 1) or (code == 2 and named)):
                offenders.append((flag, value, code, errors[-3:]))
    return offenders

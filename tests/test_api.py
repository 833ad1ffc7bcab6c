"""The Python API as the README shows it: its snippet runs as written, from any folder and from a
checkout whose moeplace/ folder shadows the installed package; its errors name parameters."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import moeplace

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    """The README's Python API block, as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


@pytest.mark.slow
def test_the_readme_snippet_runs_as_written(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", readme_snippet()], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    reduction, max_mean = map(float, result.stdout.split())
    assert reduction > 0.05 and max_mean < 1.15  # the figures it prints are the held-out ones
    assert moeplace.load_placement(tmp_path / "placement.yaml").validation["holdout"]["in_sample"] is False
    assert (tmp_path / "expert_location.json").stat().st_size > 0


def test_a_checkout_imports_its_layers_without_the_installed_package():
    """A script in the checkout's root imports the moeplace/ folder there, not the installed
    package: without site (no editable finder) only the folders beside it can serve the layers."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    code = (
        f"import sys; sys.path[1:1] = {site!r}; import moeplace; "
        "from moeplace.calibrate.trace_io import load_trace; from moeplace.planner.plan import plan; "
        "from moeplace.validators.report import validate; print(moeplace.__file__)"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == ROOT / "moeplace"


@pytest.mark.slow
def test_library_errors_name_the_parameter_for_python_and_the_flag_for_the_cli(tmp_path):
    from conftest import refused, run

    placement = moeplace.plan(
        moeplace.compute_statistics(moeplace.load_trace(moeplace.demo_trace_path())),
        moeplace.Topology(32, 4),
        "frequency",
    )
    with pytest.raises(moeplace.MoeplaceError, match="give num_hidden_layers") as caught:
        moeplace.export(placement, "sglang", tmp_path / "x.json")
    assert "--" not in str(caught.value)
    moeplace.save_placement(placement, tmp_path / "p.yaml")
    error = refused(run("export", tmp_path / "p.yaml", "--format", "sglang", "--out", tmp_path / "x.json"))
    assert "give --num-hidden-layers" in error and "num_hidden_layers" not in error

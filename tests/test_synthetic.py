"""The synthetic trace generator (speed and memory work only), the fast distinct-set helper, and
a smoke run of the scale benchmark at toy size (it asserts figures exist, not how fast)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moeplace.calibrate.stats import unique_rows
from moeplace.calibrate.synthetic import SyntheticSpec, generate
from moeplace.calibrate.trace import check_trace
from moeplace.calibrate.trace_io import load_trace
from moeplace.validators.locality.structure import clustering_gain, shuffled, token_expert_matrix

SPEC = SyntheticSpec(
    num_experts=32, top_k=4, num_layers=2, num_tokens=6000, num_documents=30, num_domains=4, domain_boost=30
)


def test_synthetic_trace_is_valid_deterministic_and_structured(tmp_path):
    generate(SPEC, tmp_path / "a")
    generate(SPEC, tmp_path / "b")
    trace = load_trace(tmp_path / "a")
    check_trace(trace)  # ids in range, k distinct experts per token
    assert trace.topk_ids.shape == (6000, 2, 4) and trace.num_documents == 30
    assert trace.fingerprint() == load_trace(tmp_path / "b").fingerprint()
    chosen = token_expert_matrix(np.asarray(trace.topk_ids[:, 0]), 32)
    rng = np.random.default_rng(0)
    assert clustering_gain(chosen, 4) > 1.5 > clustering_gain(shuffled(chosen, rng), 4)  # domains co-fire


def test_unique_rows_is_numpys_unique():
    rng = np.random.default_rng(0)
    for rows in (rng.integers(-1, 300, (5000, 8)), rng.integers(-1, 3, (400, 5)), np.zeros((0, 3))):
        rows = np.sort(rows, axis=1).astype(np.int16)
        sets, inverse = unique_rows(rows)
        expected, expected_inverse = np.unique(rows, axis=0, return_inverse=True)
        np.testing.assert_array_equal(sets, expected)
        np.testing.assert_array_equal(inverse, expected_inverse.reshape(-1))


@pytest.mark.slow
def test_scale_benchmark_runs_at_toy_size(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "scale.py"
    args = ["--tokens", "3000", "--layers", "2", "--experts", "16", "--top-k", "4", "--devices", "4",
            "--solvers", "frequency", "--plan-devices", "4", "--workdir", str(tmp_path)]  # fmt: skip
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    stages = {row["stage"] for row in rows}
    assert stages == {"generate", "statistics", "validate", "step", "solve", "plan"}
    assert all("error" not in row and "timeout" not in row for row in rows)
    assert all(row["peak_gib"] > 0 for row in rows)

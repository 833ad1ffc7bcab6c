"""``moeplace profile`` then ``moeplace bench`` on CPU, 2 ranks (gloo), with their defaults: the
figures and the wall time of each.

    python benchmarks/bench_cpu.py [--out-dir DIR] [BENCH OPTIONS...]

Targets (issue: measured counterpart of the step model): each command under 2 minutes on a
2-core machine; moeplace's speedup of the step against frequency (1 - step / frequency's),
predicted vs measured, within 2 points, with the measured speedup's spread over the runs beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moeplace.demo import demo_trace_path

TARGET_SECONDS, TARGET_POINTS = 120.0, 2.0


def torchrun(*args: str) -> tuple[float, str]:
    """Run ``moeplace ARGS`` on 2 ranks; wall seconds and stdout (stderr passes through)."""
    command = [
        shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "moeplace.cli",
        *args,
    ]
    start = time.perf_counter()
    done = subprocess.run(
        command, stdout=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(args[:1])} failed (exit {done.returncode})")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None, help="Keep the profile YAML here.")
    args, bench_options = parser.parse_known_args()
    folder = args.out_dir or Path(tempfile.mkdtemp(prefix="moeplace-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    profile = folder / "cpu-profile.yaml"
    profile_seconds, profile_out = torchrun("profile", "--out", str(profile))
    print(profile_out.strip())
    bench_seconds, bench_out = torchrun(
        "bench", str(demo_trace_path()), "--profile", str(profile), "--json", *bench_options
    )
    result = json.loads(bench_out)
    print(
        f"\nbench: {result['steps']} {result['workload']['phase']} steps x {result['layers']} layers, "
        f"{result['repeats']} runs, hidden {result['hidden']}, intermediate {result['intermediate']}"
    )
    header = ("placement", "measured ms", "predicted ms", "speedup", "runs", "predicted")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, (20, 12, 13, 8, 17, 10), strict=True)))
    for row in result["placements"]:
        runs = f"{row['speedup_min']:+.1%}..{row['speedup_max']:+.1%}"
        print(
            f"{row['placement']:>20} {row['measured_ms']:>12.1f} {row['predicted_ms']:>13.1f} "
            f"{row['speedup']:>+8.1%} {runs:>17} {row['predicted_speedup']:>+10.1%}"
        )
    print()
    for row in result["placements"][1:]:
        gap = (row["predicted_speedup"] - row["speedup"]) * 100
        inside = row["speedup_min"] <= row["predicted_speedup"] <= row["speedup_max"]
        print(
            f"{row['placement']}: speedup predicted {row['predicted_speedup']:+.1%} vs measured "
            f"{row['speedup']:+.1%} (runs {row['speedup_min']:+.1%} to {row['speedup_max']:+.1%}, std "
            f"{row['speedup_std'] * 100:.1f} "
            f"points): {gap:+.1f} points, {'within' if abs(gap) <= TARGET_POINTS else 'NOT within'} "
            f"{TARGET_POINTS:g}; the prediction is {'inside' if inside else 'outside'} the measured spread"
        )
    for name, seconds in (("profile", profile_seconds), ("bench", bench_seconds)):
        verdict = "under" if seconds < TARGET_SECONDS else "OVER"
        print(f"{name}: {seconds:.1f} s wall ({verdict} {TARGET_SECONDS:.0f} s)")
    print(f"profile: {profile}")


if __name__ == "__main__":
    main()

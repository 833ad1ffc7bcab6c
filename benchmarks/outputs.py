"""Every command's outputs on the real traces, written to one folder, to diff two revisions.

    python benchmarks/outputs.py OUT_DIR          # about 5 minutes on 2 cores
    python benchmarks/outputs.py OUT_DIR compare  # only the commands named (they need no others)
    git stash; python benchmarks/outputs.py /tmp/before; git stash pop
    python benchmarks/outputs.py /tmp/after && diff -r /tmp/before /tmp/after

A refactor that changes no behaviour leaves the folders identical: placements, exported engine
files, comparison tables and CSVs, every ``--json`` object, and each command's printed lines and
exit code. Plots are left out (matplotlib's PNGs are not byte-stable) and so is anything timed:
progress lines, and the solve times in printed tables and JSON (their files carry none).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"
DEMO = ROOT / "moeplace" / "data" / "gpt-oss-20b-demo.npz"
LOAD = TRACES / "dsv3-load"

# (name, arguments): {o} is the output folder; every command's stdout, stderr and exit code are kept
COMMANDS = [
    ("split", "split {demo} --fit-out {o}/fit.npz --holdout-out {o}/held.npz"),
    ("stats", "stats {o}/fit.npz --json"),
    ("stats-text", "stats {o}/held.npz"),
    (
        "import-load",
        "import sglang-load {load}/prefill_in1024.json {load}/decode_in1000out1000.json "
        "{load}/prefill_in4096.json --model-config {load}/config.json --out {o}/load.npz",
    ),
    (
        "import-recent",
        "import sglang-load {load}/prefill_in512.json {load}/decode_in2000out100.json "
        "--model-config {load}/config.json --out {o}/recent.npz",
    ),
    ("plan", "plan {o}/fit.npz --devices 8 --holdout {o}/held.npz --step prefill --out {o}/plan.yaml"),
    (
        "plan-json",
        "plan {o}/fit.npz --devices 4 --solver refine --holdout {o}/held.npz --step decode "
        "--min-speedup 0.5 --out {o}/plan-json.yaml --json",
    ),
    ("plan-auto", "plan {o}/fit.npz --devices 8 --load-tolerance auto --step prefill --out {o}/auto.yaml"),
    (
        "plan-search",
        "plan {o}/fit.npz --devices 8 --step prefill --step-search 40 --redundant-slots 0 "
        "--out {o}/search.yaml --json",
    ),
    (
        "plan-groups",
        "plan {o}/fit.npz --devices 8 --nodes 2 --groups 4 --groups-per-token 2 "
        "--group-mode auto --step prefill --out {o}/groups.yaml",
    ),
    (
        "plan-replicas",
        "plan {o}/fit.npz --devices 4 --redundant-slots 4 --holdout {o}/held.npz --out {o}/replicas.yaml",
    ),
    ("replan", "plan {o}/held.npz --from {o}/plan.yaml --max-moves 3 --step prefill --out {o}/replan.yaml"),
    (
        "replan-auto",
        "plan {o}/held.npz --from {o}/plan.yaml --max-moves 3 --step prefill "
        "--load-tolerance auto --out {o}/replan-auto.yaml --json",
    ),
    (
        "plan-load",
        "plan {o}/load.npz --devices 32 --nodes 4 --redundant-slots 32 --holdout {o}/recent.npz "
        "--out {o}/load.yaml --json",
    ),
    (
        "plan-load-groups",
        "plan {o}/load.npz --devices 32 --nodes 4 --group-mode auto --step decode "
        "--model-config {load}/config.json --out {o}/load-groups.yaml",
    ),
    ("replan-load", "plan {o}/recent.npz --from {o}/load.yaml --max-moves 8 --out {o}/replan-load.yaml"),
    ("validate", "validate {o}/plan.yaml {o}/held.npz --step prefill"),
    ("validate-json", "validate {o}/plan.yaml {o}/held.npz --step decode --kernel node --json"),
    ("validate-load", "validate {o}/load.yaml {o}/recent.npz --json"),
    (
        "compare",
        "compare {demo} --devices 4,8 --solvers frequency,eplb,greedy-capped,refine "
        "--step prefill --out {o}/compare",
    ),
    ("compare-json", "compare {demo} --devices 8 --load-tolerance 0,0.1 --json --out {o}/compare-json"),
    (
        "compare-more",
        "compare {demo} --devices 4,8 --nodes 2 --node-cost 0.5 --redundant-slots 0,8 --oracle "
        "--solvers frequency,greedy-capped,refine --load-tolerance 0,0.1 --step decode --kernel node "
        "--search-steps 100 --json --out {o}/compare-more",
    ),
    ("diagnose", "diagnose {o}/fit.npz --json"),
    ("monitor", "monitor {o}/plan.yaml {o}/held.npz --json"),
    ("monitor-load", "monitor {o}/load.yaml {o}/recent.npz"),
    ("export-sglang", "export {o}/plan.yaml --format sglang --num-hidden-layers 24 --out {o}/sglang.json"),
    ("export-sglang-load", "export {o}/load.yaml --format sglang --out {o}/sglang-load.json"),
    ("export-ascend", "export {o}/replicas.yaml --format vllm-ascend --out {o}/ascend.json"),
    ("export-trtllm", "export {o}/load.yaml --format tensorrt-llm --out {o}/trtllm.yaml"),
    ("export-permutation", "export {o}/plan.yaml --format permutation --out {o}/permutation.json"),
    ("bad-input", "plan {o}/plan.yaml --devices 8 --out {o}/never.yaml"),
    ("demo", "demo --out {o}/demo"),
]


def untimed(text: str, out: Path) -> str:
    """``text`` with the output folder as OUT, and without what differs run to run: progress lines
    (``label: 3/24 layers, 1 min 00 s``) and solve times (a table's last column, JSON ``seconds``)."""
    text = re.sub(r"(?m)^.*: \d+/\d+ \w+, \d+ min \d\d s\n", "", text.replace(str(out), "OUT"))
    text = re.sub(r'"seconds": [0-9.e+-]+', '"seconds": ~', text)
    return re.sub(r"(?m)\| [0-9.]+ \|$", "| ~ |", text)


def main(out: Path, names: list[str]) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    moeplace = [sys.executable, "-m", "moeplace.cli"]
    for name, command in COMMANDS:
        if names and name not in names:
            continue
        args = command.format(o=out, demo=DEMO, load=LOAD).split()
        result = subprocess.run(moeplace + args, capture_output=True, text=True, cwd=out)
        (out / f"{name}.stdout").write_text(untimed(result.stdout, out))
        (out / f"{name}.stderr").write_text(untimed(result.stderr, out) + f"exit {result.returncode}\n")
        print(f"{name}: exit {result.returncode}", file=sys.stderr)
    for plot in out.rglob("*.png"):
        plot.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), sys.argv[2:])

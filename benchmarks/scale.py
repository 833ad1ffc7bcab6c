"""Speed and memory at production size, on this machine: prints the figures, asserts nothing.

    python benchmarks/scale.py                      # 1M tokens x 58 layers x top-8 x 256 experts
    python benchmarks/scale.py --stream-tokens 10000000   # also a 10M-token trace streamed from disk
    python benchmarks/scale.py --tokens 100000 --layers 8  # a quick look

Each stage runs in a child process so its peak resident memory is its own. Stages: generate the
synthetic trace (once; reused from --workdir), accumulate statistics, validate one placement, the
step model on it (prefill and decode, nodes of 8 GPUs),
solver wall time per layer at D = 8, 32, 64, 256 (each capped by --solver-timeout), full plans at
D = 64, and statistics and validation over the streamed trace. Synthetic routing: speed and memory
only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--layers", type=int, default=58)
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--stream-tokens", type=int, default=0, help="also time a trace this long (0: skip)")
    parser.add_argument("--devices", default="8,32,64,256")
    parser.add_argument("--solvers", default="frequency,greedy-capped,ortools,refine,hypergraph")
    parser.add_argument("--best", default="greedy-capped", help="the solver timed for the full plan")
    parser.add_argument("--plan-devices", default="64", help="devices of the full plans")
    parser.add_argument("--solver-timeout", type=float, default=300.0, help="seconds per solver x D")
    parser.add_argument("--workdir", type=Path, default=Path("bench-data"))
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--arg", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        result = STAGES[args.stage](args, *args.arg)
        result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    trace = args.workdir / f"synthetic-{args.tokens}x{args.layers}x{args.top_k}x{args.experts}"
    stats = trace.with_suffix(".stats.npz")
    rows = [
        child(args, "generate", str(trace)) if not trace.exists() else {"stage": "generate", "note": "reused"}
    ]
    rows.append(child(args, "statistics", str(trace), str(stats)))
    rows.append(child(args, "validate", str(trace), str(stats)))
    for phase in ("prefill", "decode"):
        rows.append(child(args, "step", str(trace), str(stats), phase))
    for solver in args.solvers.split(","):
        for devices in args.devices.split(","):
            rows.append(child(args, "solve", str(stats), solver, devices, timeout=args.solver_timeout))
    for solver in dict.fromkeys(["frequency", "greedy-capped", args.best]):
        rows.append(child(args, "plan", str(stats), solver, args.plan_devices, timeout=1200.0))
    if args.stream_tokens:
        big = args.workdir / f"synthetic-{args.stream_tokens}x{args.layers}x{args.top_k}x{args.experts}"
        if not big.exists():
            rows.append(child(args, "generate", str(big), str(args.stream_tokens)))
        rows.append(child(args, "statistics", str(big), str(big.with_suffix(".stats.npz"))))
        rows.append(child(args, "validate", str(big), str(big.with_suffix(".stats.npz"))))
    print(json.dumps(rows, indent=1))


def child(args, stage: str, *stage_args: str, timeout: float | None = None) -> dict:
    """Run one stage in a fresh process; its JSON line, or a note that it ran out of time."""
    command = [sys.executable, __file__, "--stage", stage, *(f"--arg={a}" for a in stage_args)]
    command += [f"--tokens={args.tokens}", f"--layers={args.layers}", f"--experts={args.experts}"]
    command += [f"--top-k={args.top_k}", f"--plan-devices={args.plan_devices}"]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        result = {"stage": stage, "args": list(stage_args), "timeout": timeout}
    except subprocess.CalledProcessError as exc:
        result = {"stage": stage, "args": list(stage_args), "error": exc.stderr.strip().splitlines()[-1:]}
    result["wall_s"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result), flush=True)
    return result


def stage_generate(args, path: str, tokens: str | None = None) -> dict:
    from moeplace.calibrate.synthetic import SyntheticSpec, generate

    count = int(tokens) if tokens else args.tokens
    spec = SyntheticSpec(args.experts, args.top_k, args.layers, count, max(1, count // 500))
    start = time.perf_counter()
    generate(spec, path)
    return {"stage": "generate", "tokens": count, "seconds": time.perf_counter() - start}


def stage_statistics(args, path: str, out: str) -> dict:
    from moeplace.calibrate.stats import compute_statistics
    from moeplace.calibrate.stats_io import save_statistics
    from moeplace.calibrate.trace_io import load_trace

    trace = load_trace(path)
    start = time.perf_counter()
    stats = compute_statistics(trace)
    seconds = time.perf_counter() - start
    save_statistics(stats, out)
    sets = sum(s.counts.shape[0] for s in stats.topk_sets)
    return {
        "stage": "statistics",
        "tokens": trace.num_tokens,
        "seconds": seconds,
        "token_layers_per_s": trace.num_tokens * trace.num_layers / seconds,
        "distinct_sets_per_layer": sets / trace.num_layers,
    }


def stage_validate(args, path: str, stats_path: str) -> dict:
    from moeplace.calibrate.stats_io import load_statistics
    from moeplace.calibrate.trace_io import load_trace
    from moeplace.planner.plan import plan
    from moeplace.planner.solvers import SolverOptions
    from moeplace.planner.topology import Topology
    from moeplace.validators.report import validate

    stats, trace = load_statistics(stats_path), load_trace(path)
    topology = Topology(stats.meta.num_experts, int(args.plan_devices))
    placement = plan(stats, topology, "frequency", SolverOptions(), {})
    start = time.perf_counter()
    validate(placement, trace, allow_overlap=True)
    seconds = time.perf_counter() - start
    return {
        "stage": "validate",
        "tokens": trace.num_tokens,
        "seconds": seconds,
        "token_layers_per_s": trace.num_tokens * trace.num_layers / seconds,
    }


def stage_step(args, path: str, stats_path: str, phase: str) -> dict:
    """The step model on one placement (the frequency plan at --plan-devices in 8-GPU nodes)."""
    from moeplace.calibrate.stats_io import load_statistics
    from moeplace.calibrate.trace_io import load_trace
    from moeplace.planner.plan import plan
    from moeplace.planner.solvers import SolverOptions
    from moeplace.planner.topology import Topology
    from moeplace.validators.step import Workload, step_cost

    stats, trace = load_statistics(stats_path), load_trace(path)
    devices = int(args.plan_devices)
    topology = Topology(stats.meta.num_experts, devices, max(devices // 8, 1))
    placement = plan(stats, topology, "frequency", SolverOptions(), {})
    start = time.perf_counter()
    cost = step_cost(placement.physical_to_logical, trace, topology, Workload(phase, kernel="node"))
    seconds = time.perf_counter() - start
    return {
        "stage": "step",
        "phase": phase,
        "steps": cost.steps,
        "tokens": trace.num_tokens,
        "seconds": seconds,
    }


def stage_solve(args, stats_path: str, solver: str, devices: str) -> dict:
    from moeplace.calibrate.stats_io import load_statistics
    from moeplace.planner.plan import solve_layer
    from moeplace.planner.solvers import SolverOptions
    from moeplace.planner.topology import Topology

    stats = load_statistics(stats_path)
    layer = stats.layer(stats.num_layers // 2)
    start = time.perf_counter()
    solve_layer(
        solver, layer, Topology(stats.meta.num_experts, int(devices)), SolverOptions(load_tolerance=0.1)
    )
    return {
        "stage": "solve",
        "solver": solver,
        "devices": int(devices),
        "seconds_per_layer": time.perf_counter() - start,
    }


def stage_plan(args, stats_path: str, solver: str, devices: str) -> dict:
    from moeplace.calibrate.stats_io import load_statistics
    from moeplace.cluster import layer_executor
    from moeplace.planner.plan import plan
    from moeplace.planner.solvers import SolverOptions
    from moeplace.planner.topology import Topology

    stats = load_statistics(stats_path)
    start = time.perf_counter()
    with layer_executor(os.cpu_count() or 1) as pool:
        topology = Topology(stats.meta.num_experts, int(devices))
        plan(stats, topology, solver, SolverOptions(load_tolerance=0.1), {}, executor=pool)
    return {
        "stage": "plan",
        "solver": solver,
        "devices": int(devices),
        "seconds": time.perf_counter() - start,
    }


STAGES = {
    "generate": stage_generate,
    "statistics": stage_statistics,
    "validate": stage_validate,
    "step": stage_step,
    "solve": stage_solve,
    "plan": stage_plan,
}

if __name__ == "__main__":
    main()

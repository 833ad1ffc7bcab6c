"""The step model's verdict on the shared traces: frequency, EPLB and the recommended plan per setting.

    python benchmarks/step_targets.py > docs/step-model-results.md     # about 30 minutes on 2 cores

Per trace (50/50 document split, seed 0 unless --seed; fit on one half, scored on the other) and
setting (D, nodes, phase, batch, kernel, overlap), the recommended plan is ``plan --solver S
--load-tolerance auto``: the cheapest estimated step replayed on the calibration half among
frequency, EPLB and S at each tolerance of the grid, then (for the first solver) polished by
``--step-search`` swaps. Printed on the held-out half, from the ``h800`` profile: the busiest rank's
dispatch, expert compute and combine time per step (and the mean rank's, what a perfect balance
would pay), the whole step (the MoE part and the rest: attention, shared and dense layers, gate,
head, overhead), its change against frequency and EPLB, the MoE part's change against frequency,
and the change in communication and compute against frequency. Estimates of a model, not
measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from moeplace.calibrate.split import split_documents
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.trace_io import load_trace
from moeplace.planner.plan import plan
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.choose import BALANCERS, choose_tolerance
from moeplace.validators.profile import H800, StepTime, shape_of, step_time
from moeplace.validators.report import StepSetting
from moeplace.validators.step import Workload
from moeplace.validators.step_search import step_search

# (devices, nodes, phase, kernel, overlap): the settings; batches 512 tokens / 32 requests a rank
SETTINGS = [
    (8, 1, "decode", "rank", True),
    (8, 1, "decode", "rank", False),
    (8, 1, "prefill", "rank", True),
    (8, 1, "prefill", "rank", False),
    (16, 2, "prefill", "node", True),
    (16, 2, "decode", "node", True),
    (8, 1, "prefill", "expert", True),
    (8, 1, "decode", "expert", True),
    (16, 2, "prefill", "expert", True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "traces")
    parser.add_argument("--names", default="gpt-oss-20b-decode,esft-dsv2lite-prefill")
    parser.add_argument("--solvers", default="refine,greedy-capped")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--step-search", type=int, default=200, help="swaps a layer after auto (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 50/50 document split")
    parser.add_argument("--settings", help="indices into SETTINGS, e.g. 0,2 (default: all)")
    args = parser.parse_args()
    solvers = args.solvers.split(",")
    print(__doc__.split("\n\n")[2].replace("\n", " ").strip() + "\n")
    with ProcessPoolExecutor(args.jobs) as pool:
        for name in args.names.split(","):
            trace = load_trace(args.traces / f"{name}.npz")
            fit, held = split_documents(trace, 0.5, args.seed)
            stats = compute_statistics(fit, resamples=16, seed=0)
            shape = shape_of(trace.meta.model)
            plans = {}

            def cached(stats, topology, solver, options, provenance, plans=plans):
                key = (topology, solver, options.load_tolerance if solver not in BALANCERS else None)
                if key not in plans:
                    plans[key] = plan(stats, topology, solver, options, provenance, executor=pool)
                return plans[key]

            print(
                f"## {trace.meta.model}: fit {fit.num_documents} documents, held out {held.num_documents}\n"
            )
            header = ["D", "phase", "kernel", "overlap", "plan", "dispatch", "compute", "combine", "rest"]
            header += ["whole step (ms)", "vs frequency", "vs eplb", "MoE part vs freq.", "comm. vs freq."]
            header += ["compute vs freq.", "mean rank: dispatch, compute, combine"]
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * 16)
            chosen = [int(i) for i in args.settings.split(",")] if args.settings else range(len(SETTINGS))
            for devices, nodes, phase, kernel, overlap in (SETTINGS[i] for i in chosen):
                topology = Topology(trace.meta.num_experts, devices, nodes)
                setting = StepSetting(Workload(phase, 512, 32, kernel), H800, shape, overlap)
                rows = {b: cached(stats, topology, b, SolverOptions(seed=0), {}) for b in BALANCERS}
                balancers = dict(rows)
                for solver in solvers:

                    def solver_at(options, solver=solver, topology=topology, stats=stats):
                        return cached(stats, topology, solver, options, {})

                    choice = choose_tolerance(
                        fit, topology, setting, solver_at, SolverOptions(seed=0), balancers
                    )
                    rows[f"{solver} auto: {choice.name}"] = choice.placement
                    if args.step_search and solver == solvers[0]:
                        rows[f"{solver} auto: {choice.name} + step search"] = step_search(
                            choice.placement, fit, setting, args.step_search, executor=pool
                        )
                times = {}
                for label, placement in rows.items():
                    cost, time = setting.replay(placement.physical_to_logical, held, topology)
                    mean = step_time(dataclasses.replace(cost, straggler=cost.mean), shape, H800, kernel)
                    times[label] = (time, mean)
                for label, (time, mean) in times.items():
                    print(row(devices, phase, kernel, overlap, label, time, mean, times))


def row(devices, phase, kernel, overlap, label, time: StepTime, mean: StepTime, times) -> str:
    freq, eplb = times["frequency"][0], times["eplb"][0]

    def change(a: float, b: float) -> str:
        return f"{a / b - 1:+.1%}"

    step = time.total(overlap)
    return (
        f"| {devices} | {phase} | {kernel} | {'yes' if overlap else 'no'} | {label} "
        f"| {time.dispatch * 1e3:.3f} | {time.compute * 1e3:.3f} | {time.combine * 1e3:.3f} "
        f"| {time.rest * 1e3:.3f} | {step * 1e3:.3f} "
        f"| {change(step, freq.total(overlap))} | {change(step, eplb.total(overlap))} "
        f"| {change(time.moe(overlap), freq.moe(overlap))} "
        f"| {change(time.communication, freq.communication)} | {change(time.compute, freq.compute)} "
        f"| {mean.dispatch * 1e3:.3f}, {mean.compute * 1e3:.3f}, {mean.combine * 1e3:.3f} |"
    )


if __name__ == "__main__":
    main()

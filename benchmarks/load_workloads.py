"""Balance on workloads a placement never saw: real DeepSeek-V3 expert load (SGLang's records).

    python benchmarks/load_workloads.py > docs/load-results.md

Leave one workload out: of the 8 workloads in ``../shared/traces/dsv3-load/`` (imported as
``moeplace import sglang-load`` does), plan on 7 and score the 8th, every workload once; then
in-sample: plan on one workload and score it. Solvers: ``robust`` (moeplace's load planner) and
``eplb`` (DeepSeek's EPLB as moeplace's ``eplb`` solver runs it, fit on the 7 workloads' per-layer
shares pooled with equal weight, hierarchical with ``--group-mode nodes``). Max/mean device load
per MoE layer (a replicated expert's load split evenly over its copies), averaged over the 58 MoE
layers; then the mean and the worst over the scored workloads.

``--layers-every K`` scores every K-th MoE layer only (quick runs while developing).
``--replan`` instead measures re-plans with few moves (``plan --from --max-moves M``): the placement
served is fit on the six prefill workloads, the two decode workloads arrive, and the re-plan on
them changes at most M slots a layer; its balance on them against the served placement's and a
plan from scratch on them.
``--group-modes`` instead prices keeping routing groups on nodes: ``robust`` fit on all 8 workloads
with groups on nodes and free, at EP32 (4 nodes) and EP64 (8 nodes), each serving step estimated
(``h800`` profile, two-micro-batch overlap) on routing fitted to the pooled load, as ``plan
--group-mode auto`` does, for prefill and decode under DeepEP's node-deduplicating and per-expert
kernels.
``--speed`` instead times the plan the issue sizes: all 8 workloads, EP64 = 8 nodes x 8, R = 64,
``robust``, groups free and on nodes, then ``--group-mode auto`` for prefill steps, on ``--jobs``
processes, with the peak memory (this process and its workers).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from moeplace.calibrate.importers import ImportOptions
from moeplace.calibrate.importers.sglang_load import read_load
from moeplace.calibrate.model_config import read_model_config
from moeplace.calibrate.stats import Statistics
from moeplace.cluster import layer_executor
from moeplace.planner.plan import plan
from moeplace.planner.replan_slots import replan_slots
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.balance import validate_balance
from moeplace.validators.choose import AUTO_GROUP_MODES, choose_group_mode, fitted_steps
from moeplace.validators.profile import load_profile, shape_of
from moeplace.validators.report import StepSetting
from moeplace.validators.step import Workload

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "dsv3-load"

# name: (devices, nodes, redundant slots, group mode), with the targets (mean, worst)
CONFIGS = {
    "ep32-nodes": (32, 4, 32, "nodes"),
    "ep32-free": (32, 4, 32, "free"),
    "ep64-free": (64, 8, 64, "free"),
}
TARGETS = {"ep32-nodes": (1.29, 1.42), "ep32-free": (1.08, 1.22), "ep64-free": (1.13, 1.37)}


def workloads(every: int) -> dict[str, Statistics]:
    """Each shared file's statistics (one workload), every ``every``-th MoE layer."""
    layout = read_model_config(DATA / "config.json")
    out = {}
    for path in sorted(DATA.glob("*_*.json")):
        stats = read_load([path], ImportOptions(layout=layout, model="deepseek-ai/DeepSeek-V3"))
        out[path.stem] = subsample(stats, every)
    return out


def subsample(stats: Statistics, every: int) -> Statistics:
    if every == 1:
        return stats
    keep = np.arange(0, stats.num_layers, every)
    meta = dataclasses.replace(stats.meta, layer_ids=tuple(stats.meta.layer_ids[i] for i in keep))
    return dataclasses.replace(
        stats,
        meta=meta,
        load=stats.load[keep],
        load_resamples=stats.load_resamples[keep],
        workload_load=stats.workload_load[:, keep],
    )


def score(fit: Statistics, held: Statistics, config: str, solver: str, pool) -> float:
    """Held-out max/mean (mean over layers) of ``solver`` fit on ``fit``."""
    devices, nodes, redundant, mode = CONFIGS[config]
    topology = Topology(fit.meta.num_experts, devices, nodes, redundant)
    placement = plan(fit, topology, solver, SolverOptions(group_mode=mode), executor=pool)
    return float(validate_balance(placement, held, allow_overlap=fit is held).summary()["max_mean_load"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--solvers", default="eplb,robust")
    parser.add_argument("--layers-every", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-in-sample", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--replan", action="store_true")
    parser.add_argument("--group-modes", action="store_true")
    args = parser.parse_args()
    if args.speed:
        speed(args.jobs)
        return
    if args.replan:
        replans(args.configs.split(","), args.layers_every)
        return
    if args.group_modes:
        group_modes(args.layers_every, args.jobs)
        return
    data = workloads(args.layers_every)
    names = list(data)
    solvers = args.solvers.split(",")
    print("# Balance on unseen workloads: real DeepSeek-V3 expert load\n")
    print("Generated by `python benchmarks/load_workloads.py` (see its docstring for the protocol).")
    print(f"Workloads: {', '.join(names)}. Layers scored: every {args.layers_every}.\n")
    with layer_executor(args.jobs) as pool:
        for config in args.configs.split(","):
            devices, nodes, redundant, mode = CONFIGS[config]
            shape = f"EP{devices} = {nodes} nodes x {devices // nodes}, R = {redundant}, groups {mode}"
            print(f"## {config}: {shape}\n")
            print("| held-out workload | " + " | ".join(solvers) + " |")
            print("|---|" + "---|" * len(solvers))
            results = {s: [] for s in solvers}
            for held in names:
                fit = pool_workloads(data, held)
                row = []
                for solver in solvers:
                    value = score(fit, data[held], config, solver, pool)
                    results[solver].append(value)
                    row.append(f"{value:.3f}")
                print(f"| {held} | " + " | ".join(row) + " |")
                sys.stdout.flush()
            means = " | ".join(
                f"**{np.mean(results[s]):.3f}**, worst {np.max(results[s]):.3f}" for s in solvers
            )
            print(f"| **mean, worst** | {means} |")
            target = TARGETS[config]
            print(f"\nTarget for `robust`: mean <= {target[0]}, worst <= {target[1]}.\n")
            if args.no_in_sample:
                continue
            print(f"In-sample (fit and score one workload), {config}:\n")
            print("| workload | " + " | ".join(solvers) + " |")
            print("|---|" + "---|" * len(solvers))
            inside = {s: [] for s in solvers}
            for name in names:
                row = []
                for solver in solvers:
                    value = score(data[name], data[name], config, solver, pool)
                    inside[solver].append(value)
                    row.append(f"{value:.3f}")
                print(f"| {name} | " + " | ".join(row) + " |")
                sys.stdout.flush()
            print("| **mean** | " + " | ".join(f"**{np.mean(inside[s]):.3f}**" for s in solvers) + " |\n")


def replans(configs: list[str], every: int, budgets=(0, 4, 8, 16, 32, 64)) -> None:
    """Prefill served, decode arrives: balance on decode after M slot moves a layer."""
    data = workloads(every)
    prefill = pool_workloads({n: s for n, s in data.items() if n.startswith("prefill")}, held="")
    decode = pool_workloads({n: s for n, s in data.items() if n.startswith("decode")}, held="")
    print("## Re-plans with few moves: served on prefill, decode arrives\n")
    print("    python benchmarks/load_workloads.py --replan\n")
    print("Max/mean device load on the two decode workloads (mean over layers, then over the two),")
    print("after the re-plan moved at most M slots a layer; *recovered*: the share of the gain of a")
    print(f"`robust` plan from scratch on decode that the moves make. Layers: every {every}.\n")
    print("| configuration | served | " + " | ".join(f"M = {m}" for m in budgets) + " | from scratch |")
    print("|---|---|" + "---|" * len(budgets) + "---|")
    for config in configs:
        devices, nodes, redundant, mode = CONFIGS[config]
        topology = Topology(prefill.meta.num_experts, devices, nodes, redundant)
        served = plan(prefill, topology, "robust", SolverOptions(group_mode=mode))
        scratch = plan(decode, topology, "robust", SolverOptions(group_mode=mode))
        before, after = (
            float(validate_balance(p, decode, allow_overlap=True).max_mean_load.mean())
            for p in (served, scratch)
        )
        cells = []
        for budget in budgets:
            moved_plan = replan_slots(decode, served, budget)
            moved = float(validate_balance(moved_plan, decode, allow_overlap=True).max_mean_load.mean())
            cells.append(f"{moved:.3f} ({(before - moved) / (before - after):.0%})")
        print(f"| {config} | {before:.3f} | " + " | ".join(cells) + f" | {after:.3f} |")
        sys.stdout.flush()
    print()


# (phase, batch a rank, kernel) of the steps --group-modes prices
STEPS = (
    ("prefill", 1024, "node"),
    ("prefill", 1024, "rank"),
    ("decode", 128, "node"),
    ("decode", 128, "expert"),
)


def group_modes(every: int, jobs: int) -> None:
    """Estimated serving steps with groups on nodes and free, as ``--group-mode auto`` prices them."""
    everything = pool_workloads(workloads(every), held="")
    print("## Groups on nodes or free: the serving step\n")
    print("    python benchmarks/load_workloads.py --group-modes\n")
    print("`robust` fit on all 8 workloads, each mode; the whole step (ms; a model, `h800` profile,")
    print("two-micro-batch overlap) on routing fitted to the pooled load, as `plan --group-mode auto`")
    print("prices it; the MoE part's communication and compute of the busiest rank beside it, and the")
    print("rest of the step (attention, shared expert, dense layers, head; the same in both modes);")
    print("*RDMA*: tokens a rank receives over RDMA per token of its batch, the mean rank / the busiest")
    print("(averaged over layers): what fewer nodes a token saves on average, and what is paid.")
    print(f"Layers: every {every}.\n")
    print("| configuration | step | rest | nodes: step (comm., compute) | nodes: RDMA "
          "| free: step (comm., compute) | free: RDMA | auto picks |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    with layer_executor(jobs) as pool:
        for devices, nodes in ((32, 4), (64, 8)):
            topology = Topology(everything.meta.num_experts, devices, nodes, devices)
            placements = {
                mode: plan(everything, topology, "robust", SolverOptions(group_mode=mode), executor=pool)
                for mode in AUTO_GROUP_MODES
            }
            for phase, batch, kernel in STEPS:
                workload = Workload(phase, batch, batch, kernel)
                setting = StepSetting(workload, load_profile("h800"), shape_of("deepseek-ai/DeepSeek-V3"))
                routing = fitted_steps(everything, setting, devices).trace
                cells, totals = [], {}
                for mode, placement in placements.items():
                    cost, time_ = setting.replay(placement.physical_to_logical, routing, topology)
                    totals[mode] = time_.total(True)
                    rdma_mean = float(cost.mean["received_rdma"].mean() / cost.batch)
                    cells.append(
                        f"{time_.total(True) * 1e3:.1f} ({time_.communication * 1e3:.1f}, "
                        f"{time_.compute * 1e3:.1f}) | {rdma_mean:.2f} / "
                        f"{cost.traffic().rdma_received_straggler:.2f}"
                    )
                picked = min(totals, key=totals.get)
                print(
                    f"| EP{devices} = {nodes} nodes, R = {devices} | {phase} {batch}, {kernel} kernel "
                    f"| {time_.rest * 1e3:.1f} | " + " | ".join(cells) + f" | {picked} |"
                )
                sys.stdout.flush()
    print()


def speed(jobs: int) -> None:
    """Seconds and peak memory of the EP64 R = 64 robust plan of all 8 workloads."""
    import resource

    start = time.perf_counter()
    everything = pool_workloads(workloads(1), held="")
    print(f"import of 8 workloads: {time.perf_counter() - start:.2f} s")
    topology = Topology(everything.meta.num_experts, 64, 8, 64)
    with layer_executor(jobs) as pool:
        for mode in ("free", "nodes"):
            start = time.perf_counter()
            plan(everything, topology, "robust", SolverOptions(group_mode=mode), executor=pool)
            print(f"robust EP64 R=64 groups {mode}, {jobs} processes: {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        workload = Workload("prefill", 1024, 32, "node")
        setting = StepSetting(workload, load_profile("h800"), shape_of("deepseek-ai/DeepSeek-V3"))
        routing = fitted_steps(everything, setting, 64).trace
        robust_at = lambda options: plan(everything, topology, "robust", options, executor=pool)  # noqa: E731
        choose_group_mode(routing, topology, setting, robust_at, SolverOptions())
        print(f"robust EP64 R=64 group mode auto (prefill, both plans), {jobs} processes: "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    scope = "this process, planning included" if jobs == 1 else "this process; --jobs 1 to include planning"
    print(f"peak resident memory ({scope}): {peak / 2**20:.2f} GiB")


def pool_workloads(data: dict[str, Statistics], held: str) -> Statistics:
    """The statistics of every workload but ``held``, kept apart (as one import of those files)."""
    rest = [stats for name, stats in data.items() if name != held]
    merged = rest[0]
    for stats in rest[1:]:
        merged = merged + stats
    return merged


if __name__ == "__main__":
    main()

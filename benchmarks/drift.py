"""Traffic drift on the shared traces: a kind of traffic left out, re-plans that move few experts,
and the monitor over a day of load records.

    python benchmarks/drift.py > docs/drift-results.md      # writes docs/drift-replan.png too

1. Leave one kind out. For each trace and each label group (every group once; gpt-oss's datasets
grouped by family), plan at D devices on the documents of the other groups and score on the
left-out group's: ``frequency``, and ``SOLVER`` at load tolerance EPS (or the least the hottest
expert allows, if more) with the load cap checked on document resamples (the default guard) and
on label-group resamples (``--resample-by labels``). The in-distribution row is the usual random
50/50 document split (seed 0) of the whole trace.

2. Re-plan with few moves. The placement planned without a group is served; the group's
documents arrive, split 50/50 (seed 0) into recent traffic (what the re-plan sees) and future
traffic (what it is scored on). ``plan --from --max-moves M`` for several M against ``SOLVER``
from scratch on the recent traffic: the share of the from-scratch plan's dev/token and max/mean
gains over the served placement that M moves recover, on the future traffic.

3. A day of load records. Hourly load-only statistics (as `moeplace import sglang-stat` makes from
SGLang's stat dumps) of ESFT traffic whose mix drifts from the calibration mix (law, summary and
intent) towards translation, which the served placement never saw: what ``moeplace monitor``
says each hour, and how long it takes.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np

import moeplace
from moeplace.calibrate.split import split_by_label
from moeplace.planner.plan import least_tolerance
from moeplace.planner.replan import replan
from moeplace.validators.choose import SERVED, choose_tolerance, plan_balancers
from moeplace.validators.monitor import watch
from moeplace.validators.profile import H800, shape_of
from moeplace.validators.report import StepSetting
from moeplace.validators.step import Workload

TRACES = {
    "esft-dsv2lite-prefill": ["intent", "law", "summary", "translation"],
    "gpt-oss-20b-decode": [
        "mmlu_dev*,mmlu_test*,mmlu_validation*",
        "mmlu_pro*",
        "gpqa*",
        "sorry_bench*",
        "Polyglot*,tulu3*",
    ],
}
MOVE_SHARES = (0, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)  # moves a layer, as a share of the experts


def options_for(stats, topology, eps) -> moeplace.SolverOptions:
    return moeplace.SolverOptions(load_tolerance=max(eps, least_tolerance(stats, topology)), seed=0)


def left_out(args) -> None:
    print("## 1. One kind of traffic left out\n")
    print(f"D = {args.devices}, `{args.solver}` at eps {args.eps:g}, {args.resamples} load resamples.\n")
    print(
        "| trace | scored on | frequency max/mean | document guard: reduction, max/mean "
        "| label guard: reduction, max/mean |"
    )
    print("|---|---|---|---|---|")
    for name, groups in TRACES.items():
        trace = moeplace.load_trace(args.traces / f"{name}.npz")
        splits = [("random half (in distribution)", *moeplace.split_documents(trace, 0.5, 0))]
        splits += [(f"left out: {g}", *split_by_label(trace, g)) for g in groups]
        topology = moeplace.Topology(trace.meta.num_experts, args.devices)
        for label, fit, held in splits:
            cells = []
            for by in ("documents", "labels"):
                stats = moeplace.compute_statistics(fit, resamples=args.resamples, seed=0, resample_by=by)
                options = options_for(stats, topology, args.eps)
                if by == "documents":
                    frequency = moeplace.validate(moeplace.plan(stats, topology, "frequency", options), held)
                validation = moeplace.validate(moeplace.plan(stats, topology, args.solver, options), held)
                cells.append(f"{validation.reduction:+.1%}, {validation.score.headline.max_mean_load:.3f}")
            print(
                f"| {name} | {label} ({held.num_tokens} tokens) "
                f"| {frequency.score.headline.max_mean_load:.3f} | {' | '.join(cells)} |",
                flush=True,
            )
    print()


def replans(args) -> list[tuple[str, list[float], list[float]]]:
    print("## 2. Re-plans that move few experts\n")
    print(
        f"D = {args.devices}; served: `{args.solver}` at eps {args.eps:g} without the group; recent and "
        "future: halves of the group's documents. Each cell: dev/token, max/mean load on the future half "
        "after `plan --from --max-moves M`; N experts a layer.\n"
    )
    moves = " | ".join(f"M = N/{round(1 / share)}" if share else "M = 0" for share in MOVE_SHARES)
    print(f"| trace | arrived | from scratch | {moves} |")
    print("|---|---|---|" + "---|" * len(MOVE_SHARES))
    curves = []
    for name, groups in TRACES.items():
        trace = moeplace.load_trace(args.traces / f"{name}.npz")
        topology = moeplace.Topology(trace.meta.num_experts, args.devices)
        for group in groups:
            fit, arrived = split_by_label(trace, group)
            recent, future = moeplace.split_documents(arrived, 0.5, 0)
            fit_stats, recent_stats = moeplace.compute_statistics(fit), moeplace.compute_statistics(recent)
            fit_options = options_for(fit_stats, topology, args.eps)
            served = moeplace.plan(fit_stats, topology, args.solver, fit_options)
            options = options_for(recent_stats, topology, args.eps)
            scratch = figures(moeplace.plan(recent_stats, topology, args.solver, options), future)
            after = [
                figures(replan(recent_stats, served, round(share * trace.meta.num_experts), options), future)
                for share in MOVE_SHARES
            ]
            curves.append((f"{name}: {group}", after, scratch))
            cells = " | ".join(f"{d:.3f}, {m:.3f}" for d, m in after)
            print(f"| {name} | {group} | {scratch[0]:.3f}, {scratch[1]:.3f} | {cells} |", flush=True)
    print()
    return curves


def replan_steps(args) -> None:
    print("### The serving step\n")
    print(
        f"The same splits, chosen by `--load-tolerance auto`: the step model (profile h800, kernel rank, "
        f"communication overlapped; prefill {args.step_tokens} tokens a rank, decode 32 requests a rank) "
        "picks, on the recent half, the tolerance of the from-scratch plan (or a balancer) and of the "
        f"re-plan with M = N/8 moves (or the served placement). Estimated step on the future half (ms, "
        "a model), and the share of the from-scratch plan's step gain over the served placement that the "
        "moves recover.\n"
    )
    print("| trace | arrived | served | from scratch (auto) | M = N/8 (auto) | recovered |")
    print("|---|---|---|---|---|---|")
    for name, groups in TRACES.items():
        trace = moeplace.load_trace(args.traces / f"{name}.npz")
        topology = moeplace.Topology(trace.meta.num_experts, args.devices)
        phase = "prefill" if name.endswith("prefill") else "decode"
        setting = StepSetting(Workload(phase, args.step_tokens, 32, "rank"), H800, shape_of(trace.meta.model))
        moves = trace.meta.num_experts // 8
        for group in groups:
            fit, arrived = split_by_label(trace, group)
            recent, future = moeplace.split_documents(arrived, 0.5, 0)
            fit_stats, recent_stats = moeplace.compute_statistics(fit), moeplace.compute_statistics(recent)
            served = moeplace.plan(
                fit_stats, topology, args.solver, options_for(fit_stats, topology, args.eps)
            )
            options = moeplace.SolverOptions(seed=0)

            def plan_at(solver, options, stats=recent_stats, topology=topology):
                return moeplace.plan(stats, topology, solver, options)

            def replan_at(options, stats=recent_stats, served=served, moves=moves):
                return replan(stats, served, moves, options)

            solver_at = functools.partial(plan_at, args.solver)
            balancers = plan_balancers(plan_at, options)
            scratch = choose_tolerance(recent, topology, setting, solver_at, options, balancers)
            moved = choose_tolerance(recent, topology, setting, replan_at, options, {SERVED: served})
            steps = [
                setting.replay(p.physical_to_logical, future, topology)[1].total(setting.overlap) * 1e3
                for p in (served, scratch.placement, moved.placement)
            ]
            gain = steps[0] - steps[1]
            recovered = f"{(steps[0] - steps[2]) / gain:.0%}" if gain > 0 else "no gain to recover"
            print(
                f"| {name} | {group} | {steps[0]:.3f} | {steps[1]:.3f} ({scratch.name}) "
                f"| {steps[2]:.3f} ({moved.name}) | {recovered} |",
                flush=True,
            )
    print()


def figures(placement, trace) -> tuple[float, float]:
    """Held-out dev/token and max/mean load of ``placement`` on ``trace``."""
    headline = moeplace.validate(placement, trace, allow_overlap=True).score.headline
    return headline.dev_per_token, headline.max_mean_load


def plot(curves, path: Path) -> None:
    """Both figures against the move budget, relative to the from-scratch plan's (dashed: 0)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    percent = [share * 100 for share in MOVE_SHARES]
    for label, after, scratch in curves:
        for ax, index in zip(axes, (1, 0), strict=True):
            ax.plot(percent, [(a[index] / scratch[index] - 1) * 100 for a in after], marker="o", label=label)
    for ax, title in zip(axes, ("max/mean load", "devices per token"), strict=True):
        ax.set(title=f"{title} above a full re-plan's (%)", xlabel="moves a layer (% of experts)")
        ax.axhline(0, color="grey", linestyle="--")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})


def day_of_records(args) -> None:
    print("## 3. A day of load records\n")
    trace = moeplace.load_trace(args.traces / "esft-dsv2lite-prefill.npz")
    fit, new = split_by_label(trace, "translation")
    served_fit, calibration_rest = moeplace.split_documents(fit, 0.5, 0)
    topology = moeplace.Topology(trace.meta.num_experts, args.devices)
    stats = moeplace.compute_statistics(served_fit)
    served = moeplace.plan(stats, topology, args.solver, options_for(stats, topology, args.eps))
    rng = np.random.default_rng(0)
    print(
        f"Served: `{args.solver}` at D = {args.devices}, fit on half the law, summary and intent documents. "
        "Each hour 40 documents, a share of them translation (never seen), the rest from the other "
        "half of the calibration kinds; `moeplace monitor` on that hour's load-only statistics.\n"
    )
    print("| hour | translation share | max/mean now | at calibration | limit | if rebalanced | action |")
    print("|---|---|---|---|---|---|---|")
    loads, seconds = [], []
    for hour in range(24):
        share = min(1.0, hour / 16)
        count = round(40 * share)
        docs = [
            calibration_rest.select_documents(rng.choice(calibration_rest.num_documents, 40 - count)),
            new.select_documents(rng.choice(new.num_documents, count)),
        ]
        load = sum(moeplace.compute_statistics(d, resamples=0).load for d in docs if d.num_documents)
        loads.append(load)
        start = time.perf_counter()
        result = watch(served, load, [])
        seconds.append(time.perf_counter() - start)
        s = result.summary()["max_mean_load"]
        print(
            f"| {hour:02d}:00 | {share:.0%} | {s['recent']:.3f} | {s['calibration']:.3f} "
            f"| {result.limit:.3f} | {s['rebalanced']:.3f} | {result.action} |"
        )
    start = time.perf_counter()
    day = watch(served, sum(loads), [])
    whole = time.perf_counter() - start
    print(
        f"\nThe whole day at once: {day.action} ({day.verdict}) A verdict from one hour's records took "
        f"{np.median(seconds) * 1e3:.1f} ms (median), the day's {whole * 1e3:.1f} ms, after loading the "
        "records.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "traces")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--solver", default="greedy-capped")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--resamples", type=int, default=16)
    parser.add_argument("--step-tokens", type=int, default=512, help="prefill tokens a rank in a step")
    parser.add_argument("--plot", type=Path, default=Path(__file__).parents[1] / "docs" / "drift-replan.png")
    args = parser.parse_args()
    print("# Traffic drift: results\n")
    print("\n\n".join(" ".join(part.split()) for part in __doc__.split("\n\n")[2:5]) + "\n")
    left_out(args)
    plot(replans(args), args.plot)
    replan_steps(args)
    day_of_records(args)


if __name__ == "__main__":
    main()

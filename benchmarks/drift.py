"""Traffic drift on the shared traces: fit on some kinds of traffic, score on the kind left out.

    python benchmarks/drift.py > docs/drift-results.md

For each trace and each label group left out (every group once; gpt-oss's datasets grouped by
family), plans at D devices on the documents of the other groups and scores on the left-out
group's: ``frequency``, and ``SOLVER`` at load tolerance EPS with the load cap checked on
document resamples (the default guard) and on label-group resamples (``--resample-by labels``).
The in-distribution row is the usual random 50/50 document split (seed 0) of the whole trace.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import moeplace
from moeplace.calibrate.split import split_by_label

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


def scores(fit, held, devices, solver, eps, resamples):
    """(reduction, held-out max/mean) of frequency and of ``solver`` under each guard."""
    topology = moeplace.Topology(fit.meta.num_experts, devices)
    options = moeplace.SolverOptions(load_tolerance=eps, seed=0)
    out = {}
    for by in ("documents", "labels"):
        stats = moeplace.compute_statistics(fit, resamples=resamples, seed=0, resample_by=by)
        if by == "documents":
            frequency = moeplace.validate(moeplace.plan(stats, topology, "frequency", options), held)
            out["frequency"] = frequency.reduction, frequency.score.headline.max_mean_load
        validation = moeplace.validate(moeplace.plan(stats, topology, solver, options), held)
        out[by] = validation.reduction, validation.score.headline.max_mean_load
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "traces")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--solver", default="greedy-capped")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--resamples", type=int, default=16)
    args = parser.parse_args()
    print(__doc__.split("\n\n")[2].replace("\n", " ").strip() + "\n")
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
        for label, fit, held in splits:
            s = scores(fit, held, args.devices, args.solver, args.eps, args.resamples)
            guards = " | ".join(f"{s[by][0]:+.1%}, {s[by][1]:.3f}" for by in ("documents", "labels"))
            print(
                f"| {trace.meta.model} | {label} ({held.num_tokens} tokens) | {s['frequency'][1]:.3f} "
                f"| {guards} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

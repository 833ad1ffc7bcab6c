"""Plan with the Python API and validate on held-out documents .

    python examples/plan_and_validate.py [TRACE] [--devices 8]

Without TRACE it uses the gpt-oss-20b trace packaged with moeplace.
"""

import argparse

import moeplace
from moeplace.demo import demo_trace_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trace", nargs="?", default=str(demo_trace_path()))
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args()

    fit, held = moeplace.split_documents(moeplace.load_trace(args.trace), holdout_share=0.5, seed=0)
    stats = moeplace.compute_statistics(fit)  # load, co-activation and resampled loads per MoE layer
    topology = moeplace.Topology(fit.meta.num_experts, args.devices)
    options = moeplace.SolverOptions(load_tolerance=0.10, seed=0)
    for solver in ("frequency", "greedy", "greedy-capped"):
        summary = moeplace.validate(moeplace.plan(stats, topology, solver, options), held).summary()
        print(
            f"{solver:>14}: dev/token {summary['dev_per_token']:.3f} "
            f"({summary['reduction']:+.1%} vs frequency), "
            f"held-out max/mean load {summary['max_mean_load']:.3f}"
        )


if __name__ == "__main__":
    main()

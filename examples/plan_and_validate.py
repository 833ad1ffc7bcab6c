"""Plan with the Python API and validate on held-out documents (runs in a few seconds).

    python examples/plan_and_validate.py [TRACE] [--devices 8]

Without TRACE it uses the gpt-oss-20b trace packaged with moeplace.
"""

import argparse

from moeplace.calibrate.split import split_documents
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.trace_io import load_trace
from moeplace.demo import demo_trace_path
from moeplace.planner.plan import plan
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.report import validate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trace", nargs="?", default=str(demo_trace_path()))
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args()

    fit, held = split_documents(load_trace(args.trace), holdout=0.5, seed=0)
    stats = compute_statistics(fit)  # load, co-activation and resampled loads per MoE layer
    topology = Topology(fit.meta.num_experts, args.devices)
    options = SolverOptions(load_tolerance=0.10, seed=0)
    for solver in ("frequency", "greedy", "greedy-capped"):
        summary = validate(plan(stats, topology, solver, options, fit.provenance()), held).summary()
        print(
            f"{solver:>14}: dev/token {summary['dev_per_token']:.3f} "
            f"({summary['reduction']:+.1%} vs frequency), "
            f"held-out max/mean load {summary['max_mean_load']:.3f}"
        )


if __name__ == "__main__":
    main()

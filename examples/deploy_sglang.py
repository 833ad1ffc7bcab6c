"""From routing to an SGLang launch: plan, gate on held-out documents, save, export.

    python examples/deploy_sglang.py [TRACE] [--devices 8] [--out deploy/]

Without TRACE it uses the gpt-oss-20b trace packaged with moeplace. Writes ``placement.yaml``
(with its held-out figures) and ``expert_location.json`` (SGLang's ``--init-expert-location``) to
``--out``, and prints the flags that serve it; exits 1, writing nothing, if the plan does not beat
frequency-balanced placement on held-out documents within the load limit.
"""

import argparse
import sys
from pathlib import Path

import moeplace
from moeplace.demo import demo_trace_path
from moeplace.deploy.engines import launch_flags

MAX_LOAD_RATIO = 1.15  # held-out busiest device over the mean: the gate's load limit


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trace", nargs="?", default=str(demo_trace_path()))
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("deploy"))
    parser.add_argument(
        "--num-hidden-layers",
        type=int,
        default=24,
        help="the model's layers, dense ones too (gpt-oss-20b: 24)",
    )
    args = parser.parse_args()

    # calibrate on half the documents, judge on the other half
    fit, held = moeplace.split_documents(moeplace.load_trace(args.trace), holdout_share=0.5, seed=0)
    stats = moeplace.compute_statistics(fit)
    topology = moeplace.Topology(stats.meta.num_experts, args.devices)
    options = moeplace.SolverOptions(load_tolerance=0.05, seed=0)
    placement = moeplace.plan(stats, topology, "greedy-capped", options, fit.provenance())
    validation = moeplace.validate(placement, held)
    summary = validation.summary()
    print(
        f"held out: {summary['reduction']:+.1%} devices per token vs frequency, "
        f"max/mean load {summary['max_mean_load']:.3f} (frequency {summary['baseline']['max_mean_load']:.3f})"
    )
    if summary["reduction"] <= 0 or summary["max_mean_load"] > MAX_LOAD_RATIO:
        print("gate failed: serve the frequency-balanced placement instead", file=sys.stderr)
        sys.exit(1)

    args.out.mkdir(parents=True, exist_ok=True)
    moeplace.save_placement(validation.recorded_placement(), args.out / "placement.yaml")
    location = args.out / "expert_location.json"
    moeplace.export(placement, "sglang", location, num_hidden_layers=args.num_hidden_layers)
    print("\n".join(launch_flags(placement, "sglang", location, args.num_hidden_layers)))


if __name__ == "__main__":
    main()

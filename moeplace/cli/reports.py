"""What the judging commands print: per-layer tables, headline lines, the step breakdown."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from moeplace.cli.console import err, out, printable, tagged
from moeplace.planner.solvers import BASELINE
from moeplace.validators.evidence import Evidence
from moeplace.validators.report import StepComparison


def print_layers(layers: list[dict], baseline: str = BASELINE) -> None:
    # narrow headers, this placement then the baseline's figure: readable at 80 columns
    table = Table(title=f"held-out, per MoE layer: this placement, then {baseline}'s", box=box.SIMPLE)
    short = baseline if len(baseline) <= 5 else baseline[:4] + "."
    columns = ("layer", "dev/tok", short, "reduct.", "max/mean", short, "load-CV", short)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in layers:
        table.add_row(
            str(row["layer"]),
            f"{row['dev_per_token']:.3f}",
            f"{row['baseline_dev_per_token']:.3f}",
            f"{row['reduction']:+.1%}",
            f"{row['max_mean_load']:.3f}",
            f"{row['baseline_max_mean_load']:.3f}",
            f"{row['load_cv']:.3f}",
            f"{row['baseline_load_cv']:.3f}",
        )
    out.print(table)


def print_warnings(evidence: Evidence | None) -> None:
    """What the held-out check could not settle (an unknown model name, no fingerprints), on stderr."""
    for warning in () if evidence is None else evidence.warnings:
        err.print(tagged("warning:", "yellow", printable(warning)))


def evidence_label(summary: dict) -> str:
    """``held-out``, or ``IN-SAMPLE (...)`` when the held-out set shares calibration evidence."""
    holdout = summary["holdout"]
    if not holdout.get("in_sample"):
        return "held-out"
    unit = holdout["unit"]
    return f"IN-SAMPLE ({holdout['shared']} of {holdout['of']} {unit} are calibration {unit})"


def print_summary(summary: dict) -> None:
    base = summary["baseline"]
    out.print(
        Text.assemble(
            f"{evidence_label(summary)} ({summary['holdout']['tokens']} tokens, mean over layers): "
            f"dev/token {summary['dev_per_token']:.3f} vs {base['solver']} {base['dev_per_token']:.3f} (",
            (f"{summary['reduction']:+.1%}", "bold"),
            f"); max/mean load {summary['max_mean_load']:.3f} "
            f"(worst layer {summary['worst_layer_max_mean_load']:.3f}) vs {base['max_mean_load']:.3f}; "
            f"load-CV {summary['load_cv']:.3f} vs {base['load_cv']:.3f}",
            *(
                [f"; nodes/token {summary['node_per_token']:.3f} vs {base['node_per_token']:.3f}"]
                if base["node_per_token"] > 1
                else []
            ),
            *(
                [
                    f"; at most {summary['most_nodes_a_token']} nodes a token (vs "
                    f"{base['most_nodes_a_token']}; the routing's groups allow {summary['groups_per_token']})"
                ]
                if "groups_per_token" in summary
                else []
            ),
        )
    )
    out.print(
        f"for scale: random placement {summary['random_expected_dev_per_token']:.3f} dev/token; no placement "
        f"goes below {summary['dev_per_token_lower_bound']} (top-k over experts a device); balance floor "
        f"{summary['balance_floor']:.3f}"
    )


def print_balance(summary: dict) -> None:
    """A load-only validation: each held-out workload's max/mean load beside the baseline's."""
    base = summary["baseline"]
    table = Table(title=f"held-out max/mean device load (mean over MoE layers) vs {base['solver']}")
    for column in ("workload", "max/mean", "worst layer", base["solver"]):
        table.add_column(column, justify="right")
    for label, figures in summary["workloads"].items():
        table.add_row(
            printable(label),
            f"{figures['max_mean_load']:.3f}",
            f"{figures['worst_layer_max_mean_load']:.3f}",
            f"{figures['baseline_max_mean_load']:.3f}",
        )
    out.print(table)
    out.print(
        f"{evidence_label(summary)} load records, {len(summary['workloads'])} workload(s): max/mean load "
        f"{summary['max_mean_load']:.3f} (worst workload {summary['worst_workload_max_mean_load']:.3f}) vs "
        f"{base['solver']} {base['max_mean_load']:.3f} (worst {base['worst_workload_max_mean_load']:.3f}); "
        f"{summary['replica_load']}; no devices per token (load records hold no per-token routing)"
    )


def print_steps(steps: StepComparison) -> None:
    """The serving step beside the baseline's: estimated times, then the counts behind them."""
    w, ours, base = steps.setting.workload, steps.summary()["traffic"], steps.summary()["baseline_traffic"]
    out.print(
        f"serving step, {w.phase}, {w.batch_text}, kernel {w.kernel}, {ours['steps']} full steps of "
        f"{ours['replayed_steps']} replayed: "
        f"{steps.setting.profile.assumptions()}"
    )
    t, b = steps.time, steps.baseline_time

    def ms(x: float) -> str:
        return f"{x * 1e3:.3f}"

    out.print(
        f"  per step (ms): dispatch {ms(t.dispatch)} vs {ms(b.dispatch)}, expert compute {ms(t.compute)} vs "
        f"{ms(b.compute)}, combine {ms(t.combine)} vs {ms(b.combine)}; "
        f"MoE part {ms(t.moe(steps.overlap))} vs {ms(b.moe(steps.overlap))} ({steps.moe_speedup:+.1%}); "
        f"{steps.step_noun} {ms(t.total(steps.overlap))} vs "
        f"{steps.baseline_name} {ms(b.total(steps.overlap))} ({steps.speedup:+.1%}) and eplb "
        f"{ms(steps.eplb_time.total(steps.overlap))} ({steps.speedup_vs_eplb:+.1%}); "
        f"{'communication overlapped with compute' if steps.overlap else 'phases in a row'}"
    )
    if steps.setting.shape.whole:
        out.print(
            f"  the rest of the step (attention, shared and dense layers, gate, head, overhead; sizes from "
            f"{steps.setting.shape.source}): {ms(t.rest)} ms, the same for every placement"
        )
    else:
        out.print(
            f"  the MoE part only (sizes: {steps.setting.shape.source}): "
            "give --model-config for the whole step"
        )
    out.print(
        f"  per token of a rank's batch, busiest rank (mean rank): received {ours['received_straggler']:.3f} "
        f"({ours['received_mean']:.3f}) vs {base['received_straggler']:.3f} ({base['received_mean']:.3f}); "
        f"token-expert pairs {ours['pairs_straggler']:.3f} ({ours['pairs_mean']:.3f}) vs "
        f"{base['pairs_straggler']:.3f} ({base['pairs_mean']:.3f})"
    )

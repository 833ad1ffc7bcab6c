"""What the judging commands print: per-layer tables, headline lines, the step breakdown."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from moeplace.cli.console import err, out, printable, tagged
from moeplace.planner.workloads import REPLICA_LOAD
from moeplace.validators.balance import BalanceValidation
from moeplace.validators.evidence import Evidence
from moeplace.validators.report import StepComparison, Validation


def print_layers(validation: Validation) -> None:
    """Per MoE layer, the placement's held-out figures beside its baseline's."""
    baseline, ours, base = validation.baseline_name, validation.score, validation.baseline
    reduction = validation.layer_reduction
    # narrow headers, this placement then the baseline's figure: readable at 80 columns
    table = Table(title=f"held-out, per MoE layer: this placement, then {baseline}'s", box=box.SIMPLE)
    short = baseline if len(baseline) <= 5 else baseline[:4] + "."
    columns = ("layer", "dev/tok", short, "reduct.", "max/mean", short, "load-CV", short)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for i, layer_id in enumerate(validation.placement.layer_ids):
        table.add_row(
            str(layer_id),
            f"{ours.dev_per_token[i]:.3f}",
            f"{base.dev_per_token[i]:.3f}",
            f"{reduction[i]:+.1%}",
            f"{ours.max_mean_load[i]:.3f}",
            f"{base.max_mean_load[i]:.3f}",
            f"{ours.load_cv[i]:.3f}",
            f"{base.load_cv[i]:.3f}",
        )
    out.print(table)


def print_warnings(evidence: Evidence | None) -> None:
    """What the held-out check could not settle (an unknown model name, no fingerprints), on stderr."""
    for warning in () if evidence is None else evidence.warnings:
        err.print(tagged("warning:", "yellow", printable(warning)))


def evidence_label(evidence: Evidence | None) -> str:
    """``held-out``, or ``IN-SAMPLE (...)`` when the held-out set shares calibration evidence."""
    if evidence is None or not evidence.in_sample:
        return "held-out"
    unit = evidence.unit
    return f"IN-SAMPLE ({evidence.shared} of {evidence.total} {unit} are calibration {unit})"


def print_summary(validation: Validation) -> None:
    """The held-out headline beside the baseline's, then the figures that give it scale."""
    ours, base, name = validation.score.headline, validation.baseline.headline, validation.baseline_name
    groups_per_token = validation.groups_per_token
    out.print(
        Text.assemble(
            f"{evidence_label(validation.evidence)} ({validation.holdout.num_tokens} tokens, mean over "
            f"layers): dev/token {ours.dev_per_token:.3f} vs {name} {base.dev_per_token:.3f} (",
            (f"{validation.reduction:+.1%}", "bold"),
            f"); max/mean load {ours.max_mean_load:.3f} "
            f"(worst layer {ours.worst_layer_max_mean_load:.3f}) vs {base.max_mean_load:.3f}; "
            f"load-CV {ours.load_cv:.3f} vs {base.load_cv:.3f}",
            *(
                [f"; nodes/token {ours.node_per_token:.3f} vs {base.node_per_token:.3f}"]
                if base.node_per_token > 1
                else []
            ),
            *(
                [
                    f"; at most {ours.most_nodes_a_token} nodes a token (vs "
                    f"{base.most_nodes_a_token}; the routing's groups allow {groups_per_token})"
                ]
                if groups_per_token is not None
                else []
            ),
        )
    )
    out.print(
        f"for scale: random placement {validation.random_expected_dev_per_token:.3f} dev/token; no "
        f"placement goes below {validation.dev_per_token_lower_bound} (top-k over experts a device); "
        f"balance floor {validation.balance_floor:.3f}"
    )


def print_balance(balance: BalanceValidation) -> None:
    """A load-only validation: each held-out workload's max/mean load beside the baseline's."""
    ours, base, name = (
        balance.workload_max_mean_load,
        balance.baseline_workload_max_mean_load,
        balance.baseline_name,
    )
    table = Table(title=f"held-out max/mean device load (mean over MoE layers) vs {name}")
    for column in ("workload", "max/mean", "worst layer", name):
        table.add_column(column, justify="right")
    for w, label in enumerate(balance.workloads):
        table.add_row(
            printable(label),
            f"{ours[w]:.3f}",
            f"{balance.max_mean_load[w].max():.3f}",
            f"{base[w]:.3f}",
        )
    out.print(table)
    out.print(
        f"{evidence_label(balance.evidence)} load records, {len(balance.workloads)} workload(s): max/mean "
        f"load {ours.mean():.3f} (worst workload {ours.max():.3f}) vs {name} {base.mean():.3f} (worst "
        f"{base.max():.3f}); {REPLICA_LOAD}; no devices per token (load records hold no per-token routing)"
    )


def print_steps(steps: StepComparison) -> None:
    """The serving step beside the baseline's: estimated times, then the counts behind them."""
    w, ours, base = steps.setting.workload, steps.cost.traffic(), steps.baseline_cost.traffic()
    out.print(
        f"serving step, {w.phase}, {w.batch_text}, kernel {w.kernel}, {ours.steps} full steps of "
        f"{ours.replayed_steps} replayed: "
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
        f"  per token of a rank's batch, busiest rank (mean rank): received {ours.received_straggler:.3f} "
        f"({ours.received_mean:.3f}) vs {base.received_straggler:.3f} ({base.received_mean:.3f}); "
        f"token-expert pairs {ours.pairs_straggler:.3f} ({ours.pairs_mean:.3f}) vs "
        f"{base.pairs_straggler:.3f} ({base.pairs_mean:.3f})"
    )

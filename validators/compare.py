"""Solver x device-count comparison: fit on one split, score on the other; table, CSV, plot."""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path

from moeplace.atomic import write_bytes, write_text
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.trace import Trace
from moeplace.planner.placement import Placement
from moeplace.planner.plan import plan
from moeplace.planner.solvers import BASELINE, SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.report import validate

COLUMNS = {  # CSV name -> Markdown header
    "devices": "D",
    "solver": "solver",
    "dev_per_token": "dev/token",
    "reduction": f"reduction vs {BASELINE}",
    "load_cv": "load-CV",
    "max_mean_load": "max/mean load",
    "worst_layer_max_mean_load": "worst layer max/mean",
    "seconds": "plan time (s)",
}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``rows``: one dict per (devices, solver), keys ``COLUMNS``; ``placements``: the same, validated."""

    rows: list[dict]
    placements: dict[tuple[int, str], Placement]
    title: str


def compare(
    fit: Trace,
    holdout: Trace,
    devices: Sequence[int],
    solvers: Sequence[str],
    options: SolverOptions,
    resamples: int,
    on_layer: Callable[[], None] | None = None,
    executor: Executor | None = None,
) -> Comparison:
    """Plan ``fit`` with every solver at every device count and validate each on ``holdout``."""
    stats = compute_statistics(fit, resamples=resamples, seed=options.seed)
    calibration = fit.provenance()
    topologies = [Topology(fit.meta.num_experts, d) for d in devices]  # fail early on a bad count
    rows, placements = [], {}
    for topology in topologies:
        for solver in solvers:
            start = time.perf_counter()
            placement = plan(stats, topology, solver, options, calibration, on_layer, executor)
            seconds = time.perf_counter() - start
            summary = validate(placement, holdout).summary()
            placement = dataclasses.replace(placement, validation=summary)
            placements[topology.num_devices, solver] = placement
            rows.append(
                {"devices": topology.num_devices, "solver": solver, "seconds": round(seconds, 2)}
                | {k: summary[k] for k in COLUMNS if k in summary}
            )
    title = (
        f"{fit.meta.model}: fit on {fit.num_documents} documents ({fit.num_tokens} tokens), "
        f"scored on {holdout.num_documents} held-out documents ({holdout.num_tokens} tokens); "
        f"load tolerance {options.load_tolerance}"
    )
    return Comparison(rows, placements, title)


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a Markdown table, devices then solvers in the order given."""
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [_fmt(key, row[key]) for key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(key: str, value) -> str:
    if key == "reduction":
        return f"{value:+.1%}"
    if isinstance(value, float):
        return f"{value:.3f}" if key != "seconds" else f"{value:.1f}"
    return str(value)


def write_comparison(comparison: Comparison, out_dir: Path, load_tolerance: float) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / f"comparison.{kind}" for kind in ("md", "csv", "png")}
    write_text(paths["md"], f"{comparison.title}\n\n{markdown_table(comparison.rows)}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(comparison.rows)
    write_text(paths["csv"], buffer.getvalue())
    write_bytes(paths["png"], plot_png(comparison, load_tolerance))
    return paths


def plot_png(comparison: Comparison, load_tolerance: float) -> bytes:
    """Two panels against device count, one line per solver: dev/token and max/mean load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for solver in dict.fromkeys(row["solver"] for row in comparison.rows):
        mine = [row for row in comparison.rows if row["solver"] == solver]
        d = [row["devices"] for row in mine]
        style = {"marker": "o", "linewidth": 2.5 if solver == BASELINE else 1.5, "label": solver}
        left.plot(d, [row["dev_per_token"] for row in mine], **style)
        right.plot(d, [row["max_mean_load"] for row in mine], **style)
    right.axhline(
        1 + load_tolerance,
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"1 + eps = {1 + load_tolerance:g}",
    )
    for ax, label in (
        (left, "held-out devices per token (lower is better)"),
        (right, "held-out max/mean device load (lower is better)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({row["devices"] for row in comparison.rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("devices (D)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(comparison.title, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()

"""Comparison plots (PNG bytes) of ``ComparisonRow``s: figures against device count, the balance
frontier, and the serving step's time breakdown."""

from __future__ import annotations

import io
import textwrap

from moeplace.planner.solvers import BASELINE
from moeplace.validators.comparison_row import ComparisonRow


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig, title: str) -> bytes:
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 15)), fontsize=8)  # ~15 characters an inch
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    pyplot().close(fig)
    return buffer.getvalue()


def _solvers(rows: list[ComparisonRow]) -> list[str]:
    return list(dict.fromkeys(row.series for row in rows))


def devices_png(rows: list[ComparisonRow], title: str) -> bytes:
    """Held-out dev/token and max/mean load against device count, one line per solver."""
    import matplotlib.ticker

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for solver in _solvers(rows):
        mine = [row for row in rows if row.series == solver]
        d = [row.devices for row in mine]
        style = {"marker": "o", "linewidth": 2.5 if solver == BASELINE else 1.5, "label": solver}
        left.plot(d, [row.held_out.dev_per_token for row in mine], **style)
        right.plot(d, [row.held_out.max_mean_load for row in mine], **style)
    tolerances = {row.load_tolerance for row in rows} - {None}
    for eps in tolerances:
        right.axhline(1 + eps, color="grey", linestyle="--", linewidth=1, label=f"1 + eps = {1 + eps:g}")
    for ax, label in (
        (left, "held-out devices per token (lower is better)"),
        (right, "held-out max/mean device load (lower is better)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({row.devices for row in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("devices (D)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    return png(fig, title)


def frontier_png(rows: list[ComparisonRow], title: str) -> bytes:
    """Held-out dev/token against held-out max/mean load, one panel per device count; each capped
    solver is a line through its load tolerances (labelled), load-only solvers are single points."""
    plt = pyplot()
    devices = sorted({row.devices for row in rows})
    fig, axes = plt.subplots(
        1, len(devices), figsize=(5.2 * len(devices), 4.4), constrained_layout=True, squeeze=False
    )
    for ax, d in zip(axes[0], devices, strict=True):
        for solver in _solvers(rows):
            mine = sorted(
                (row for row in rows if row.devices == d and row.series == solver),
                key=lambda row: row.load_tolerance or 0.0,
            )
            x, y = [row.held_out.max_mean_load for row in mine], [row.held_out.dev_per_token for row in mine]
            ax.plot(x, y, marker="o", linewidth=2.5 if solver == BASELINE else 1.5, label=solver)
            for row in mine:
                if row.load_tolerance is not None:
                    ax.annotate(
                        f"{row.load_tolerance:g}",
                        (row.held_out.max_mean_load, row.held_out.dev_per_token),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        ax.set_title(f"D = {d}", fontsize=9)
        ax.set_xlabel("held-out max/mean device load")
        ax.set_ylabel("held-out devices per token")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    return png(fig, title + "  (labels: load tolerance eps; lower left is better)")


def steps_png(rows: list[ComparisonRow], title: str) -> bytes:
    """Estimated time per step of every row, one panel per device count (and replicas): the busiest
    rank's dispatch and combine in one bar, its expert compute in another, a tick at the step."""
    plt = pyplot()
    panels = sorted({(row.devices, row.redundant_slots or 0) for row in rows})
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.6 * len(panels), 0.5 + 0.45 * len(rows) / len(panels) + 1.2),
        constrained_layout=True, squeeze=False,
    )  # fmt: skip
    for ax, (d, r) in zip(axes[0], panels, strict=True):
        mine = [row for row in rows if (row.devices, row.redundant_slots or 0) == (d, r)]
        labels = [row.label for row in mine]
        y = list(range(len(mine)))
        dispatch = [row.step.dispatch_ms for row in mine]
        combine = [row.step.combine_ms for row in mine]
        ax.barh([i - 0.2 for i in y], dispatch, height=0.38, color="tab:blue", label="dispatch")
        ax.barh([i - 0.2 for i in y], combine, left=dispatch, height=0.38, color="tab:cyan", label="combine")
        ax.barh([i + 0.2 for i in y], [row.step.compute_ms for row in mine], height=0.38, color="tab:orange",
                label="expert compute")  # fmt: skip
        ax.scatter(
            [row.step.step_ms for row in mine], y, marker="|", s=300, color="black", label="step", zorder=3
        )
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"D = {d}" + (f", R = {r}" if r else ""), fontsize=9)
        ax.set_xlabel("estimated ms per step, busiest rank (a model)")
        ax.grid(alpha=0.3, axis="x")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=7)
    return png(fig, title)

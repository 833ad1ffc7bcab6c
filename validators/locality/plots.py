"""Diagnosis plots (PNG bytes): structure vs the shuffle null, cache miss rates, SRP/SCH."""

from __future__ import annotations

import numpy as np

from moeplace.validators.plots import png, pyplot


def structure_png(report: dict) -> bytes:
    """Per-layer bars: clustering gain of the real routing beside its shuffle null."""
    plt = pyplot()
    layers = report["layers"]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(layers) + 2), 3.8), constrained_layout=True)
    ax.bar(x - 0.2, [row["clustering_gain"] for row in layers], 0.4, label="real routing")
    ax.bar(x + 0.2, [row["shuffle_null_gain"] for row in layers], 0.4, label="shuffle null")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(x, [str(row["layer"]) for row in layers], fontsize=7)
    ax.set_xlabel("MoE layer (model index)")
    ax.set_ylabel(f"clustering gain, {report['settings']['groups']} groups")
    ax.legend(fontsize=7)
    return png(fig, f"{report['model']}: co-activation inside groups over independent selection")


def cache_png(report: dict) -> bytes:
    """Mean over layers: demand miss rate (and loads incl. prefetch) against cache capacity."""
    plt = pyplot()
    capacities = report["settings"]["capacities"]
    cache = report["overall"]["cache"]
    fig, ax = plt.subplots(figsize=(6.0, 4.0), constrained_layout=True)
    for policy, rows in cache.items():
        ax.plot(capacities, [r["miss_rate"] for r in rows], marker="o", label=f"{policy} (demand)")
    ax.plot(
        capacities,
        [r["loads_per_activation"] for r in cache["coact-prefetch"]],
        marker="x",
        linestyle=":",
        label="coact-prefetch (demand + prefetch loads)",
    )
    ax.set_xlabel("cache capacity (experts)")
    ax.set_ylabel("per expert activation (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig, f"{report['model']}: expert cache, mean over layers")


def consistency_png(report: dict) -> bytes:
    """Mean over layers: SRP and SCH against segment length."""
    plt = pyplot()
    lengths = report["settings"]["segment_lengths"]
    overall = report["overall"]
    fig, ax = plt.subplots(figsize=(6.0, 4.0), constrained_layout=True)
    ax.plot(lengths, overall["srp"], marker="o", label="SRP")
    ax.plot(lengths, overall["sch"], marker="o", label=f"SCH, cache {report['settings']['sch_cache']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(m) for m in lengths])
    ax.set_xlabel("segment length (tokens)")
    ax.set_ylabel("mean over layers")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig, f"{report['model']}: local routing consistency")

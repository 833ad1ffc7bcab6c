"""The diagnosis report on disk: report.md (verdict, tables), report.json, three plots."""

from __future__ import annotations

import json
from pathlib import Path

from moeplace.atomic import write_bytes, write_text
from moeplace.planner.placement import yaml_safe
from moeplace.validators.locality.plots import cache_png, consistency_png, structure_png

REPORT_FILES = ("report.md", "report.json", "structure.png", "cache.png", "consistency.png")


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``structure.png``, ``cache.png``, ``consistency.png``."""
    paths = {name: out_dir / name for name in REPORT_FILES}
    write_text(paths["report.json"], json.dumps(yaml_safe(report), indent=1) + "\n")
    for name, draw in (("structure", structure_png), ("cache", cache_png), ("consistency", consistency_png)):
        write_bytes(paths[f"{name}.png"], draw(report))
    write_text(paths["report.md"], markdown(report))
    return paths


def markdown(report: dict) -> str:
    """The verdict, then one row per layer and the mean."""
    s = report["settings"]
    budget, capacity = len(s["budgets"]) // 2, len(s["capacities"]) // 2
    segment = min(range(len(s["segment_lengths"])), key=lambda i: abs(s["segment_lengths"][i] - 16))
    lines = [
        f"# Locality diagnosis: {report['model']}",
        "",
        f"{report['tokens']} tokens, {report['documents']} documents, {len(report['layers'])} MoE layers.",
        "",
        "## Verdict (mean over layers)",
        "",
        *[f"- {text}" for text in report["overall"]["verdict"].values()],
        "",
        "## Per layer",
        "",
        f"Clustering into {s['groups']} groups; prefetch budget B = {s['budgets'][budget]}; cache capacity "
        f"C = {s['capacities'][capacity]} (demand misses per activation; prefetch: loads per activation; "
        f"replaying {report['layers'][0]['cache']['lru'][capacity]['tokens']} tokens of the second halves); "
        f"SRP and SCH (cache {s['sch_cache']}) at segment length {s['segment_lengths'][segment]}; static "
        f"placement: greedy-capped at D = {report['layers'][0]['placement']['devices']}, held-out.",
        "",
        "| layer | coact Gini | gain | shuffle null | prefetch co-act | prefetch LFU | LRU | LFU | "
        "prefetch loads | Belady | SRP | SCH | placement | max/mean |",
        "|---|" + "---|" * 13,
    ]
    for row in [*report["layers"], {"layer": "mean", **report["overall"]}]:
        cache = {policy: rows[capacity] for policy, rows in row["cache"].items()}
        cells = [
            row["coactivation_gini"],
            row["clustering_gain"],
            row["shuffle_null_gain"],
            row["prefetch"]["coact"][budget],
            row["prefetch"]["lfu"][budget],
            cache["lru"]["miss_rate"],
            cache["lfu"]["miss_rate"],
            cache["coact-prefetch"]["loads_per_activation"],
            cache["belady"]["miss_rate"],
            row["srp"][segment],
            row["sch"][segment],
        ]
        place = row["placement"]
        lines.append(
            f"| {row['layer']} | "
            + " | ".join(f"{x:.3f}" for x in cells)
            + f" | {place['reduction']:+.1%} | {place['max_mean_load']:.3f} |"
        )
    return "\n".join(lines) + "\n"

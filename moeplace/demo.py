"""``moeplace demo``: the whole job on the real gpt-oss-20b trace shipped in the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from moeplace.atomic import atomic_dir
from moeplace.calibrate.split import split_documents
from moeplace.calibrate.stats import DEFAULT_RESAMPLES
from moeplace.calibrate.trace_io import load_trace, save_trace
from moeplace.cluster import layer_executor
from moeplace.deploy.engines import export
from moeplace.errors import file_error
from moeplace.planner.placement import load_placement, save_placement
from moeplace.planner.solvers import DEFAULT_SOLVERS, SolverOptions
from moeplace.validators.compare import compare, markdown_table, write_comparison
from moeplace.validators.report import gate_failures, validate

DEVICES = (2, 4, 8)
# hypergraph is left out for time: Mt-KaHyPar's deterministic preset partitions 4 times a layer,
# whatever the layer's size. `moeplace compare` runs it.
SOLVERS_SHOWN = tuple(name for name in DEFAULT_SOLVERS if name != "hypergraph")
GATED = ("greedy-capped", 8)  # the placement the demo gates, as a user's CI would
HIDDEN_LAYERS = 24  # gpt-oss-20b: 24 layers, every one MoE (the interchange trace does not record it)


def demo_trace_path() -> Path:
    """The packaged trace: a subset of gpt-oss-20b decode routing (see data/README.md)."""
    return Path(str(resources.files("moeplace") / "data" / "gpt-oss-20b-demo.npz"))


def run_demo(
    out_dir: Path,
    load_tolerance: float,
    time_limit: float,
    search_steps: int,
    jobs: int,
    console,
    progress_bar,
) -> None:
    """split -> plan every solver at D = 2, 4, 8 -> validate on held-out -> compare; print where.

    Everything is written at the end into ``out_dir`` as a whole (atomically), so an interrupted
    demo leaves no partial folder; an earlier demo's folder is replaced, any other folder refused.
    """
    if out_dir.exists() and not _is_demo_output(out_dir):
        raise file_error(out_dir, "exists, holds files and is not a demo's output; not replacing it")
    trace = load_trace(demo_trace_path())
    console.print(
        f"demo trace: {trace.meta.model}, {trace.num_documents} documents, {trace.num_tokens} tokens, "
        f"{trace.num_layers} MoE layers, {trace.meta.num_experts} experts, top-{trace.meta.top_k}"
    )
    fit, held = split_documents(trace, holdout_share=0.5, seed=0)

    options = SolverOptions(
        load_tolerance=load_tolerance, seed=0, time_limit=time_limit, search_steps=search_steps
    )
    steps = len(DEVICES) * len(SOLVERS_SHOWN) * fit.num_layers
    with progress_bar("planning", steps) as advance, layer_executor(jobs) as pool:
        comparison = compare(
            fit,
            held,
            DEVICES,
            SOLVERS_SHOWN,
            [load_tolerance],
            options,
            DEFAULT_RESAMPLES,
            False,
            advance,
            pool,
        )
    gated = out_dir / "placements" / f"{GATED[0]}-D{GATED[1]}.yaml"
    sglang = out_dir / "sglang-init-expert-location.json"
    with atomic_dir(out_dir, replaceable=_is_demo_output) as tmp:
        save_trace(fit, tmp / "fit.npz")
        save_trace(held, tmp / "holdout.npz")
        for (devices, solver, *_), placement in comparison.placements.items():
            save_placement(placement, tmp / "placements" / f"{solver}-D{devices}.yaml")
        paths = {kind: out_dir / path.name for kind, path in write_comparison(comparison, tmp).items()}
        placement = load_placement(tmp / gated.relative_to(out_dir))
        validation = validate(placement, held)
        export(placement, "sglang", tmp / sglang.name, num_hidden_layers=HIDDEN_LAYERS)
    max_load, min_reduction = round(1 + load_tolerance + 0.05, 2), 0.10
    failures = gate_failures(validation, max_load, min_reduction)

    console.print(comparison.title)
    console.print(markdown_table(comparison.rows))
    console.print(
        f"gate on {gated} (max/mean <= {max_load}, reduction >= {min_reduction:.0%}): "
        + ("passed" if not failures else "FAILED: " + "; ".join(failures))
    )
    console.print(f"split:      {out_dir / 'fit.npz'}, {out_dir / 'holdout.npz'}")
    console.print(f"placements: {out_dir / 'placements'} ({len(comparison.placements)} files)")
    console.print(f"comparison: {paths['md']}, {paths['csv']}, {paths['png']}")
    console.print(f"SGLang:     {sglang} (--init-expert-location, --ep-size {GATED[1]})")
    console.print(
        f"next: moeplace validate {gated} {out_dir / 'holdout.npz'} "
        f"--max-load-ratio {max_load} --min-reduction {min_reduction}"
    )


def _is_demo_output(path: Path) -> bool:
    """An empty folder, or one an earlier demo wrote: the demo may replace it."""
    if not path.is_dir():
        return False
    return not any(path.iterdir()) or ((path / "comparison.md").is_file() and (path / "placements").is_dir())

"""Engines' own expert balancers beside moeplace, each run from the engine's released code.

    python benchmarks/peers.py > docs/peers.md
    python benchmarks/peers.py --trtllm-utils PATH > docs/peers.md   # with TensorRT-LLM's column

The peers: SGLang 0.5.23's ``sglang/srt/eplb/eplb_algorithms`` (``deepseek`` and
``deepseek_hierarchical``, through SGLang's own dispatcher ``rebalance_experts``), vLLM 0.33.0's
default EPLB policy (``vllm/distributed/eplb/policy/default.py``, ``DefaultEplbPolicy``) and, when
``--trtllm-utils`` names ``examples/wide_ep/ep_load_balancer/utils.py`` of a TensorRT-LLM checkout,
its ``do_placement_with_cooccurrence``. The engines' files are imported at run time from the pinned
archives in ``.engines/`` (``python tests/engines/fetch.py`` fetches them; sha256-checked against
``tests/engines/archives.json``), extracted once to ``.engines/src/`` as ``tests/engines/harness.py``
does, under stub parent packages so the engines' heavy ``__init__`` files never run. Nothing of
their code is copied here.

1. Load only (``--tables load``): leave one workload out on ``../shared/traces/dsv3-load/``
   (DeepSeek-V3, 8 workloads): every balancer is fit on the other 7 workloads' ``pooled_load()``
   (each normalized per layer, equal weights) and scored on the held-out one as ``validate_balance``
   scores (max/mean device load per MoE layer, a replicated expert's load split evenly over its
   copies, mean over the layers; then mean and worst over the 8 held-out workloads).
2. Per-token traces (``--tables traces``): ESFT (DeepSeek-V2-Lite) prefill and gpt-oss-20b decode,
   split 50/50 by documents (seed 0), fit on one half, scored on the other with ``score_placement``;
   D = 4 and 8, no redundant slots.

About 10 minutes on 2 cores, nearly all of it moeplace ``robust``'s 24 load-only fits;
``--layers-every K`` keeps every K-th MoE layer only (quick runs while developing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import os
import shlex
import sys
import time
import types
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch

from moeplace.calibrate.split import split_documents
from moeplace.calibrate.stats import Statistics, compute_statistics
from moeplace.calibrate.trace import Trace
from moeplace.calibrate.trace_io import load_trace
from moeplace.cluster import layer_executor
from moeplace.planner.plan import plan
from moeplace.planner.slots import repeated_copy
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.balance import max_over_mean, validate_balance
from moeplace.validators.score import score_placement

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_workloads import CONFIGS, DATA, pool_workloads, workloads  # a sibling script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engines"))
from archive_files import ENGINES, FETCH, extracted, pinned  # the archives the engine tests use

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "traces"
SGLANG, VLLM = "0.5.23", "0.33.0"
TRTLLM_FILE = "examples/wide_ep/ep_load_balancer/utils.py"
DSV3_GROUPS = 8  # DeepSeek-V3's routing groups (n_group): what both engines pass as num_groups


# ---------------------------------------------------------------- the engines' code, from archives


def source(name: str, version: str) -> Path:
    """The pinned archive's Python files (sha256 checked), extracted once as the engine tests do."""
    entry = pinned(name, version)
    path = ENGINES / entry["file"]
    if not path.is_file():
        sys.exit(f"{path} is missing: run `{FETCH}`")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        sys.exit(f"{path} has sha256 {digest}, not the pinned {entry['sha256']}")
    return extracted(path)


@contextlib.contextmanager
def stub_packages(root: Path, names: list[str]) -> Iterator[None]:
    """Register ``names`` as empty packages whose ``__path__`` is their folder under ``root`` (their
    ``__init__.py`` never runs); ``sys.modules`` is restored on exit, the imported modules live on."""
    saved = dict(sys.modules)
    try:
        for name in names:
            stub = types.ModuleType(name)
            stub.__path__ = [str(root.joinpath(*name.split(".")))]
            sys.modules[name] = stub
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, stub)
        yield
    finally:
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]
        sys.modules.update(saved)


def load_sglang() -> types.ModuleType:
    """SGLang's ``sglang.srt.eplb.eplb_algorithms`` (its dispatcher, ``deepseek``, ``deepseek_vec``
    and ``elasticity_aware``: torch only), under stub ``sglang``, ``sglang.srt``, ``sglang.srt.eplb``."""
    root = source("sglang", SGLANG)
    with stub_packages(root, ["sglang", "sglang.srt", "sglang.srt.eplb"]):
        return importlib.import_module("sglang.srt.eplb.eplb_algorithms")


def load_vllm() -> type:
    """vLLM's ``DefaultEplbPolicy`` from ``vllm/distributed/eplb/policy/default.py`` (numpy and torch
    only), under stub packages down to ``vllm.distributed.eplb.policy`` (whose ``__init__`` imports
    vLLM's config)."""
    root = source("vllm", VLLM)
    packages = ["vllm", "vllm.distributed", "vllm.distributed.eplb", "vllm.distributed.eplb.policy"]
    with stub_packages(root, packages):
        return importlib.import_module("vllm.distributed.eplb.policy.default").DefaultEplbPolicy


def load_trtllm(path: Path) -> Callable:
    """TensorRT-LLM's ``do_placement_with_cooccurrence`` from the user's checkout, loaded by path."""
    spec = importlib.util.spec_from_file_location("trtllm_ep_load_balancer_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.do_placement_with_cooccurrence


# ---------------------------------------------------------------- the balancers: phy2log int [L, P]


def sglang_slots(sglang, algorithm: str, load, physical: int, devices: int, groups, nodes: int) -> np.ndarray:
    """SGLang's dispatcher as ``ExpertLocationMetadata.init_by_eplb`` calls it: ``logical_count``
    ``[1, L, N]`` (one record), the model's groups and the launch's nodes, the algorithm by name."""
    phy2log, _, _ = sglang.rebalance_experts(
        tokens_per_expert=torch.from_numpy(np.asarray(load))[None],
        num_physical_experts=physical,
        num_local_physical_experts=physical // devices,
        num_groups=groups,
        num_nodes=nodes,
        algorithm=sglang.EplbAlgorithm[algorithm],
    )
    return phy2log.numpy().astype(np.int64)


def vllm_slots(policy, load, physical: int, devices: int, groups: int, nodes: int) -> np.ndarray:
    """vLLM's default policy as ``EplbState.rearrange`` calls it (no previous map: a first placement;
    the previous map only reorders slots within a GPU)."""
    phy2log = policy.rebalance_experts(torch.from_numpy(np.asarray(load)), physical, groups, nodes, devices)
    return phy2log.numpy().astype(np.int64)


def trtllm_slots(place, load: np.ndarray, coact: np.ndarray, devices: int, alpha: float) -> np.ndarray:
    """TensorRT-LLM's co-occurrence placement per layer, as its example driver prepares the inputs:
    float load, the co-occurrence matrix with its diagonal masked to -1e9, one copy an expert (no
    redundant slots: ``do_replication`` has no choice), and ``alpha``."""
    rows = []
    experts = torch.arange(load.shape[1])
    for layer_load, layer_coact in zip(load, coact, strict=True):
        matrix = torch.from_numpy(layer_coact).float().masked_fill(experts[:, None] == experts, -1e9)
        ranks = place(
            torch.from_numpy(layer_load).float(),
            torch.ones(load.shape[1], dtype=torch.int64),
            matrix,
            ep_size=devices,
            alpha=alpha,
        )
        rows.append([int(e) for rank in ranks for e in rank])
    return np.array(rows, dtype=np.int64)


def repeats(slots: np.ndarray, devices: int) -> int:
    """Layers where some GPU holds two copies of one expert."""
    per_device = slots.shape[1] // devices
    return sum(repeated_copy(row, per_device) is not None for row in slots)


def timed(fit: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    slots = fit()
    return slots, time.perf_counter() - start


# ---------------------------------------------------------------- table 1: load only, dsv3-load


def held_out_balance(slots: np.ndarray, held: Statistics, devices: int) -> float:
    """``validate_balance``'s figure for slots ``[L, P]`` on one held-out workload: max/mean device
    load per layer (``max_over_mean``), mean over layers, mean over the held-out workloads."""
    loads = held.load[None] if held.workload_load is None else held.workload_load
    return float(max_over_mean(slots, loads, devices).mean(axis=1).mean())


def load_table(args, sglang, vllm, command: str) -> None:
    data = workloads(args.layers_every)
    names = list(data)
    num_layers = next(iter(data.values())).num_layers
    print(f"## 1. Load only: DeepSeek-V3, leave one workload out\n\n    {command} --tables load\n")
    print(
        f"Fit on 7 workloads' pooled load (equal weights), scored on the 8th, each of the {len(names)} "
        f"in turn; {num_layers} MoE layers (every {args.layers_every}). Cells: held-out max/mean device "
        "load, mean over the MoE layers. *Fit s*: seconds a fit (all layers), mean over the 8 fits "
        f"(moeplace on {args.jobs} worker processes, the engines in this process). *GPU repeats*: "
        "layers where the balancer put two copies of one expert on one GPU, summed over the 8 fits "
        f"(of {8 * num_layers}). SGLang's default algorithm (`auto`) and vLLM's rule both take the "
        "hierarchical path whenever the 8 groups divide over the nodes, so on 8 nodes they would keep one "
        "group a node; EP64 here is the global policy only.\n"
    )
    blocks = [
        # (title, config, [(label, kind, arguments)])
        (
            "EP32 = 4 nodes x 8 GPUs, 32 redundant slots, routing groups kept on nodes",
            "ep32-nodes",
            [
                ("SGLang deepseek_hierarchical", "sglang", ("deepseek_hierarchical", DSV3_GROUPS, 4)),
                ("vLLM default (groups 8, 4 nodes)", "vllm", (DSV3_GROUPS, 4)),
                ("moeplace robust (nodes)", "robust", "nodes"),
            ],
        ),
        (
            "EP32 = 4 nodes x 8 GPUs, 32 redundant slots, groups free",
            "ep32-free",
            [
                ("SGLang deepseek (global)", "sglang", ("deepseek", DSV3_GROUPS, 4)),
                ("vLLM default (1 node)", "vllm", (DSV3_GROUPS, 1)),
                ("moeplace robust (free)", "robust", "free"),
            ],
        ),
        (
            "EP64 = 8 nodes x 8 GPUs, 64 redundant slots, groups free",
            "ep64-free",
            [
                ("SGLang deepseek (global)", "sglang", ("deepseek", DSV3_GROUPS, 8)),
                ("vLLM default (1 node)", "vllm", (DSV3_GROUPS, 1)),
                ("moeplace robust (free)", "robust", "free"),
            ],
        ),
    ]
    with layer_executor(args.jobs) as pool:
        if pool is not None:  # start the workers before any fit is timed
            list(pool.map(abs, range(args.jobs)))
        for title, config, balancers in blocks:
            devices, nodes, redundant, _ = CONFIGS[config]
            physical = 256 + redundant
            topology = Topology(256, devices, nodes, redundant)
            print(f"### {title}\n")
            labels = [label for label, _, _ in balancers]
            print("| held-out workload | " + " | ".join(labels) + " |")
            print("|---|" + "---|" * len(labels))
            scores = {label: [] for label in labels}
            seconds = {label: [] for label in labels}
            repeated = dict.fromkeys(labels, 0)
            check = []  # validate_balance's own EPLB baseline on the same fit, and moeplace's figure
            for held in names:
                fit = pool_workloads(data, held)
                load = fit.pooled_load()
                row = []
                for label, kind, spec in balancers:
                    if kind == "sglang":
                        slots, took = timed(
                            partial(sglang_slots, sglang, spec[0], load, physical, devices, *spec[1:])
                        )
                    elif kind == "vllm":
                        slots, took = timed(partial(vllm_slots, vllm, load, physical, devices, *spec))
                    else:
                        options = SolverOptions(group_mode=spec)
                        start = time.perf_counter()
                        placement = plan(fit, topology, "robust", options, executor=pool)
                        took = time.perf_counter() - start
                        slots = placement.physical_to_logical
                        summary = validate_balance(placement, data[held]).summary()
                        check.append((summary["max_mean_load"], summary["baseline"]))
                    value = held_out_balance(slots, data[held], devices)
                    if kind == "robust" and not np.isclose(value, check[-1][0]):
                        raise RuntimeError(
                            f"scoring differs from validate_balance: {value} vs {check[-1][0]}"
                        )
                    scores[label].append(value)
                    seconds[label].append(took)
                    repeated[label] += repeats(slots, devices)
                    row.append(f"{value:.3f}")
                print(f"| {held} | " + " | ".join(row) + " |")
                sys.stdout.flush()
            print("| **mean** | " + " | ".join(f"**{np.mean(scores[x]):.3f}**" for x in labels) + " |")
            print("| **worst** | " + " | ".join(f"**{np.max(scores[x]):.3f}**" for x in labels) + " |")
            print("| fit s | " + " | ".join(f"{np.mean(seconds[x]):.2f}" for x in labels) + " |")
            print("| GPU repeats | " + " | ".join(str(repeated[x]) for x in labels) + " |")
            baseline = [b["max_mean_load"] for _, b in check]
            worst = [b["worst_workload_max_mean_load"] for _, b in check]
            print(
                f"\nCheck: `validate_balance`'s own baseline ({check[0][1]['solver']}, moeplace's port of "
                f"DeepSeek's eplb.py, fit on the same pooled load) scores mean {np.mean(baseline):.3f}, "
                f"worst {np.max(worst):.3f}.\n"
            )


# ---------------------------------------------------------------- table 2: per-token traces


def trace_table(args, sglang, vllm, trtllm, command: str) -> None:
    print(
        "## 2. Per-token traces: fit on half the documents, score the other half\n\n"
        f"    {command} --tables traces\n"
    )
    print(
        "50/50 split by documents (seed 0); every balancer fit on the fit half's statistics "
        "(`compute_statistics`: load, and co-occurrence for TensorRT-LLM and greedy-capped), no "
        "redundant slots, one node. Scored with `score_placement` on the held-out half: *dev/token* "
        "(mean distinct GPUs a token's experts sit on), its *reduction* against moeplace `frequency` "
        "(1 - dev/token / frequency's; means over MoE layers), and *max/mean* device load (mean over "
        "layers). *Fit s*: seconds a fit, all layers, every balancer in this process.\n"
    )
    balancers = ["moeplace frequency", "SGLang deepseek (global)", "vLLM default"]
    if trtllm is not None:
        balancers.append(f"TensorRT-LLM co-occurrence (alpha {args.trtllm_alpha})")
    balancers.append("moeplace greedy-capped (eps 0.1)")
    print("| trace | D | balancer | dev/token | reduction vs frequency | max/mean | fit s |")
    print("|---|---|---|---|---|---|---|")
    halves = []
    for name in args.traces.split(","):
        trace = load_trace(TRACES / f"{name}.npz")
        if args.layers_every > 1:
            trace = every_layer(trace, args.layers_every)
        fit, held = split_documents(trace, 0.5, seed=0)
        halves.append(f"{name} {fit.num_documents} / {held.num_documents} ({held.num_tokens:,} tokens)")
        stats = compute_statistics(fit)
        num_experts = trace.meta.num_experts
        groups = trace.meta.routing_groups or 1
        for devices in (4, 8):
            topology = Topology(num_experts, devices)
            capped = SolverOptions(load_tolerance=0.1)
            fits = {
                "moeplace frequency": partial(plan, stats, topology, "frequency"),
                "SGLang deepseek (global)": partial(
                    sglang_slots, sglang, "deepseek", stats.pooled_load(), num_experts, devices, groups, 1
                ),
                "vLLM default": partial(
                    vllm_slots, vllm, stats.pooled_load(), num_experts, devices, groups, 1
                ),
                "moeplace greedy-capped (eps 0.1)": partial(plan, stats, topology, "greedy-capped", capped),
            }
            if trtllm is not None:
                fits[balancers[3]] = partial(
                    trtllm_slots, trtllm, stats.pooled_load(), stats.coact, devices, args.trtllm_alpha
                )
            results = {}
            for label in balancers:
                out, took = timed(fits[label])
                slots = out if isinstance(out, np.ndarray) else out.physical_to_logical
                if repeats(slots, devices):
                    raise RuntimeError(f"{label} put two copies of an expert on one GPU")
                results[label] = (score_placement(slots, held, topology), took)
            base = results["moeplace frequency"][0].dev_per_token.mean()
            for label in balancers:
                score, took = results[label]
                dev = score.dev_per_token.mean()
                print(
                    f"| {name} | {devices} | {label} | {dev:.3f} | {1 - dev / base:+.1%} "
                    f"| {score.max_mean_load.mean():.3f} | {took:.2f} |"
                )
            sys.stdout.flush()
    print(f"\nDocuments fit / held out: {'; '.join(halves)}.\n")


def options(args, parser) -> list[str]:
    """The command-line options of this run that differ from the defaults, but ``--tables``."""
    out = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.option_strings and action.dest not in ("help", "tables") and value != action.default:
            out += [action.option_strings[0], str(value)]
    return out


def every_layer(trace: Trace, every: int) -> Trace:
    """``trace`` with every ``every``-th MoE layer only (quick runs)."""
    keep = np.arange(0, trace.num_layers, every)
    meta = dataclasses.replace(trace.meta, layer_ids=tuple(trace.meta.layer_ids[i] for i in keep))
    return dataclasses.replace(trace, meta=meta, topk_ids=np.ascontiguousarray(trace.topk_ids[:, keep]))


# ---------------------------------------------------------------- the document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default="load,traces", help="load, traces or both (comma-separated)")
    parser.add_argument("--traces", default="esft-dsv2lite-prefill,gpt-oss-20b-decode")
    parser.add_argument("--trtllm-utils", type=Path, help=f"{TRTLLM_FILE} in a TensorRT-LLM checkout")
    parser.add_argument("--trtllm-alpha", type=float, default=0.8, help="its example driver's default")
    parser.add_argument("--layers-every", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for moeplace's load-only plans")
    args = parser.parse_args()
    tables = args.tables.split(",")
    command = shlex.join(["python", "benchmarks/peers.py", *options(args, parser)])
    started = time.perf_counter()
    sglang, vllm = load_sglang(), load_vllm()
    trtllm = None if args.trtllm_utils is None else load_trtllm(args.trtllm_utils)
    print("# Engines' balancers beside moeplace\n")
    print(f"Generated by\n\n    {command}{'' if len(tables) == 2 else ' --tables ' + args.tables}\n")
    print(
        "(`--tables load` or `--tables traces` regenerates one table; `--trtllm-utils PATH` adds "
        f"TensorRT-LLM's column, PATH being `{TRTLLM_FILE}` of a TensorRT-LLM checkout.)\n"
    )
    sglang_whl, vllm_sdist = pinned("sglang", SGLANG)["file"], pinned("vllm", VLLM)["file"]
    trt = (
        "TensorRT-LLM's `do_placement_with_cooccurrence` was **not run**: no `--trtllm-utils` was given "
        "(its example `utils.py` is not on PyPI, and is not fetched or copied here)."
        if trtllm is None
        else f"TensorRT-LLM's `do_placement_with_cooccurrence` from `{args.trtllm_utils}` "
        f"(sha256 {hashlib.sha256(args.trtllm_utils.read_bytes()).hexdigest()[:16]}…), "
        f"alpha {args.trtllm_alpha}, the diagonal of its co-occurrence input masked to -1e9 as its "
        "example driver does."
    )
    print(
        "Method: every balancer is fit on the same data for the same slots and GPUs, and every "
        "placement is scored as returned (slot p on GPU p // (P / D)) by the same moeplace function on "
        "the same held-out data. The engines take one load matrix `[layers, experts]`: they get the fit "
        "statistics' `pooled_load()` (the fit workloads' per-layer shares pooled with equal weight; a "
        "trace half's load); moeplace's `plan` takes the same statistics, of which `robust` also reads "
        "each fit workload's shares apart (its design). The engines' balancers are their own released code, "
        f"imported at run time: SGLang {SGLANG} ({sglang_whl}: "
        "`sglang.srt.eplb.eplb_algorithms.rebalance_experts`, its dispatcher, called as "
        "`ExpertLocationMetadata.init_by_eplb` calls it, with DeepSeek-V3's 8 routing groups and the "
        "launch's nodes; `deepseek` ignores both and runs DeepSeek's policy with 1 group and 1 node, "
        "`deepseek_hierarchical` packs groups to nodes first) and vLLM "
        f"{VLLM} ({vllm_sdist}: `vllm.distributed.eplb.policy.default.DefaultEplbPolicy.rebalance_experts`, "
        "called as `EplbState.rearrange` calls it, with the model's groups and the node count; it runs "
        "its hierarchical branch whenever groups % nodes == 0, so for DeepSeek-V3 on 4 nodes it keeps "
        "groups on nodes: its global placement is what it does on one node). "
        f"{trt} SGLang's `deepseek_vec` and `deepseek_vec_hierarchical` are not run: they balance "
        "SGLang's per-pass record (`[passes, layers, experts]`, the sum over passes of each pass's "
        "busiest GPU), and these load records hold only the total over passes. "
        f"torch {torch.__version__}, numpy {np.__version__}.\n"
    )
    if "load" in tables:
        print(f"Load records: `{DATA.relative_to(REPO.parent)}` (see its README).\n")
        load_table(args, sglang, vllm, command)
    if "traces" in tables:
        trace_table(args, sglang, vllm, trtllm, command)
    print(f"Runtime: {time.perf_counter() - started:.0f} s on {os.cpu_count()} CPU cores.")


if __name__ == "__main__":
    main()

"""The step model against measured serving time: the Qwen2-57B-A14B runs of an offline-EPLB study.

Reconstructs the runs of ``../shared/reference/measured-serving.md`` (SGLang on 8 and 4 H100s,
DeepEP, FP8 experts; each run serves 16,384 requests of 256 input tokens and one output token, 256
at a time) and prints, for each expert layout, the whole-step time the step model predicts beside
the measured total time, both relative to the balanced layout; then the hinge
``T(r) = a + b * max(0, r - r_k)`` fitted to the predicted times the same way the study fitted the
measured ones. Then a prediction for Qwen3-235B-A22B at EP8 (identity layout against a balanced one).

    python benchmarks/measured.py --counts57b PATH [--counts235b PATH] > docs/step-model-measured.md

``PATH``: the study's recorded load, ``OEPLB/repro/counts57b.json`` (and ``counts235b.json``) of
github.com/sjqsjq/EPLB at commit 8bd615a (28 MoE layers x 64 experts: tokens routed to each
expert under the benchmark). Defaults: ``../shared/reference/eplb-study/``.

What is reconstructed, and from what (every assumption is printed with the results):
- layouts: per layer a permutation of the 64 experts over the GPUs (no replicas), the hot ones
  piled on GPU 0 so the imbalance adds up over layers, as the study built them: ``bal``
  (longest-processing-time packing), ``identity`` (the checkpoint's order), ``conc`` (the hottest
  experts of each layer together on GPU 0) and layouts reaching each stated max/mean load r
  (averaged over layers, token-weighted), this script's own construction: GPU 0 takes the window
  of consecutive experts (in order of load) whose load is nearest a target, the rest is packed
  evenly; one target for all layers, bisected until the layers' average r is the stated one.
- routing: the recorded load holds no per-token routing, so tokens are drawn by top-k from
  per-expert weights fitted to each layer's load (``calibrate.synthetic.routing_from_load``):
  independent tokens, no correlation within a request.
- batches: SGLang's default chunked prefill for 80 GB GPUs (8,192 tokens), divided by the data-
  parallel size under ``--enable-dp-attention`` (SGLang 0.5.2 ``server_args.py``): 1,024 tokens a
  rank a step at EP8, 2,048 at EP4; requests of 256 tokens; the normal DeepEP kernels (``rank``
  rule, one node); no two-micro-batch overlap (the launch scripts do not enable it).
- time: the ``h100`` profile and Qwen2-57B-A14B's published config; one free constant, the GEMM
  efficiency, fitted so the balanced layout's predicted total time at EP8 equals the measured
  one (512 steps of 8,192 tokens). EP4 and Qwen3-235B use it unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moeplace.calibrate.synthetic import routing_from_load  # noqa: E402
from moeplace.calibrate.trace import TraceMeta  # noqa: E402
from moeplace.planner.topology import Topology  # noqa: E402
from moeplace.validators.profile import load_profile, shape_of, step_time  # noqa: E402
from moeplace.validators.step import Workload, step_cost  # noqa: E402

STUDY = ROOT.parent / "shared" / "reference" / "eplb-study"
REQUESTS, PROMPT = 16384, 256  # the benchmark: requests of 256 input tokens, one output token
CHUNK = 8192  # SGLang's default chunked prefill for GPUs of 35-160 GB, divided by dp under dp attention

# the measured runs (../shared/reference/measured-serving.md): layout -> (r, total seconds)
MEASURED_EP8 = {
    "bal": (1.010, 82.72),
    "r110": (1.073, 83.00),
    "r122": (1.148, 83.84),
    "identity": (1.218, 85.88),
    "r135": (1.220, 86.00),
    "r150": (1.287, 87.24),
    "conc": (1.550, 93.48),
}
MEASURED_EP8_HINGE = 1.099
MEASURED_EP4 = {"bal": 135.49, "identity": 139.06, "hinge": 1.032}
EP4_TARGETS = {"r108": 1.08, "r115": 1.15, "r125": 1.25, "r140": 1.40}  # the study's EP4 sweep targets


def device_load(assign: np.ndarray, counts: np.ndarray, ranks: int) -> np.ndarray:
    """Load of each GPU, float ``[D]``, for ``assign`` int ``[N]`` (GPU of each expert)."""
    return np.bincount(assign, weights=counts, minlength=ranks)


def ratio(assign: np.ndarray, counts: np.ndarray, ranks: int) -> float:
    """Max over mean GPU load of one layer."""
    load = device_load(assign, counts, ranks)
    return float(load.max() / load.mean())


def pack(experts: np.ndarray, counts: np.ndarray, gpus: list[int], per: int, assign: np.ndarray) -> None:
    """Longest processing time first: ``experts`` onto ``gpus``, ``per`` each, into ``assign``."""
    load = dict.fromkeys(gpus, 0.0)
    held = dict.fromkeys(gpus, 0)
    for e in experts[np.argsort(-counts[experts], kind="stable")]:
        g = min((g for g in gpus if held[g] < per), key=lambda g: (load[g], g))
        assign[e], load[g], held[g] = g, load[g] + counts[e], held[g] + 1


def balanced(counts: np.ndarray, ranks: int) -> np.ndarray:
    assign = np.zeros(counts.shape[0], np.int64)
    pack(np.arange(counts.shape[0]), counts, list(range(ranks)), counts.shape[0] // ranks, assign)
    return assign


def piled(counts: np.ndarray, ranks: int, target: float) -> np.ndarray:
    """GPU 0 takes the window of ``per`` consecutive experts (by load, hottest first) whose load is
    nearest ``target`` x the mean GPU load; the others are packed evenly."""
    per = counts.shape[0] // ranks
    windows = np.convolve(np.sort(counts)[::-1], np.ones(per), "valid")  # load of the window starting at i
    return on_gpu0(counts, ranks, int(np.argmin(np.abs(windows - target * counts.sum() / ranks))))


def on_gpu0(counts: np.ndarray, ranks: int, start: int) -> np.ndarray:
    """GPU 0 holds the experts ranked ``start`` to ``start + per`` by load (0: the hottest); the
    others are packed evenly. int ``[N]``: the GPU of each expert."""
    per = counts.shape[0] // ranks
    order = np.argsort(-counts, kind="stable")
    assign = np.zeros(counts.shape[0], np.int64)
    pack(np.concatenate([order[:start], order[start + per :]]), counts, list(range(1, ranks)), per, assign)
    return assign


def layouts(counts: np.ndarray, ranks: int, wanted: dict[str, float]) -> dict[str, np.ndarray]:
    """Per-layer layouts, int ``[L, N]`` GPU of each expert: bal, identity, conc, and one reaching
    each ``wanted`` average r."""
    layers, experts = counts.shape
    per = experts // ranks
    out = {
        "bal": np.stack([balanced(c, ranks) for c in counts]),
        "identity": np.tile(np.arange(experts) // per, (layers, 1)),
        "conc": np.stack([on_gpu0(c, ranks, 0) for c in counts]),
    }
    for name, r in wanted.items():
        lo, hi = 1.0, 2.0 * r
        for _ in range(40):  # bisect the common target until the layers' average r is r
            mid = (lo + hi) / 2
            trial = np.stack([piled(c, ranks, mid) for c in counts])
            lo, hi = (mid, hi) if average_ratio(trial, counts, ranks) < r else (lo, mid)
        out[name] = np.stack([piled(c, ranks, hi) for c in counts])
    return out


def average_ratio(assign: np.ndarray, counts: np.ndarray, ranks: int) -> float:
    """Max/mean GPU load averaged over layers: the study's r."""
    return float(np.mean([ratio(a, c, ranks) for a, c in zip(assign, counts, strict=True)]))


def physical_to_logical(assign: np.ndarray, ranks: int) -> np.ndarray:
    """int ``[L, N]``: the expert in each slot, slots GPU-major, for ``assign`` int ``[L, N]``."""
    return np.stack(
        [np.argsort(a * assign.shape[1] + np.arange(assign.shape[1]), kind="stable") for a in assign]
    )


def hinge(r: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """``T = a + b max(0, r - k)`` by least squares over a grid of knees k: (a, b, k)."""
    best = (np.inf, 0.0, 0.0, 0.0)
    for k in np.arange(1.0, float(r.max()), 0.0005):
        x = np.column_stack([np.ones_like(r), np.maximum(0.0, r - k)])
        (a, b), *_ = np.linalg.lstsq(x, t, rcond=None)
        rss = float(((x @ [a, b] - t) ** 2).sum())
        if rss < best[0]:
            best = (rss, float(a), float(b), float(k))
    return best[1], best[2], best[3]


@dataclasses.dataclass(frozen=True)
class Setting:
    model: str
    ranks: int
    prompt: int
    steps: int


def predicted_steps(counts: np.ndarray, plans: dict[str, np.ndarray], setting: Setting, seed: int) -> dict:
    """The step counts of each layout, int ``[L, N]`` GPU of each expert, replayed on the same
    routing fitted to ``counts``; with the model's sizes: name -> (StepCost, ModelShape)."""
    layers, experts = counts.shape
    meta = TraceMeta(setting.model, experts, 8, tuple(range(layers)), phase="prefill", source="recorded load")
    tokens_per_rank = CHUNK // setting.ranks
    lengths = np.full(setting.steps * CHUNK // setting.prompt, setting.prompt, np.int64)
    routing = routing_from_load(counts, meta, lengths, seed).trace
    topology = Topology(experts, setting.ranks)
    workload = Workload("prefill", tokens_per_rank=tokens_per_rank, kernel="rank")
    shape = shape_of(setting.model)
    out = {}
    for name, assign in plans.items():
        cost = step_cost(physical_to_logical(assign, setting.ranks), routing, topology, workload)
        out[name] = (cost, shape)
    return out


def step_ratio(cost) -> float:
    """Per-step r of a replay: the busiest rank's token-expert pairs over the mean rank's, per step,
    averaged over steps and layers (the r the step pays; the layout's r plus sampling noise)."""
    return float(np.mean(cost.straggler["pairs"] / cost.mean["pairs"]))


def times(costs: dict, profile) -> dict[str, tuple[float, float]]:
    """(whole step, MoE part) seconds per layout, without overlap."""
    result = {}
    for name, (cost, shape) in costs.items():
        t = step_time(cost, shape, profile, "rank")
        result[name] = (t.total(False), t.moe(False))
    return result


def fit_efficiency(cost_bal, profile, measured_step: float) -> float:
    """The GEMM efficiency at which the balanced layout's predicted step is ``measured_step``."""
    lo, hi = 1e-3, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        step = times({"bal": cost_bal}, dataclasses.replace(profile, efficiency=mid))["bal"][0]
        lo, hi = (mid, hi) if step > measured_step else (lo, mid)
    return (lo + hi) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts57b", type=Path, default=STUDY / "counts57b.json")
    parser.add_argument("--counts235b", type=Path, default=STUDY / "counts235b.json")
    parser.add_argument("--profile", default="h100")
    parser.add_argument("--steps", type=int, default=32, help="steps replayed a layout")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    counts = read_counts(args.counts57b, "counts57b.json")
    profile = load_profile(args.profile)
    model = "Qwen/Qwen2-57B-A14B"
    ep8 = layouts(counts, 8, {name: r for name, (r, _) in MEASURED_EP8.items() if name.startswith("r")})
    ep4 = layouts(counts, 4, EP4_TARGETS)
    costs8 = predicted_steps(counts, ep8, Setting(model, 8, PROMPT, args.steps), args.seed)
    costs4 = predicted_steps(counts, ep4, Setting(model, 4, PROMPT, args.steps), args.seed)
    steps_run = REQUESTS * PROMPT // CHUNK  # 512 steps of 8,192 tokens at either EP size
    efficiency = fit_efficiency(costs8["bal"], profile, MEASURED_EP8["bal"][1] / steps_run)
    fitted = dataclasses.replace(profile, efficiency=efficiency)
    t8, t4 = times(costs8, fitted), times(costs4, fitted)
    r8 = {name: average_ratio(a, counts, 8) for name, a in ep8.items()}
    r4 = {name: average_ratio(a, counts, 4) for name, a in ep4.items()}
    print("# The step model against measured serving time (Qwen2-57B-A14B, SGLang on H100s)\n")
    print(
        f"Produced by `python benchmarks/measured.py` ({time.perf_counter() - started:.0f} s on 2 cores).\n"
    )
    print_assumptions(profile, efficiency, args.steps)
    print_ep8(r8, t8, costs8)
    print_ep4(r4, t4, costs4, steps_run)
    if args.counts235b.is_file():
        print_235b(read_counts(args.counts235b, "counts235b.json"), fitted, args)


def read_counts(path: Path, name: str) -> np.ndarray:
    """The study's recorded load, float ``[L, N]``."""
    if not path.is_file():
        sys.exit(
            f"error: {path}: no such file; it is OEPLB/repro/{name} of github.com/sjqsjq/EPLB at commit "
            "8bd615a (give its path)"
        )
    return np.asarray(json.loads(path.read_text())["counts"], np.float64)


def print_assumptions(profile, efficiency: float, steps: int) -> None:
    print("## Assumptions\n")
    listed = __doc__.split("(every assumption is printed with the results):")[1].strip()
    for line in listed.split("\n- "):
        print("- " + " ".join(line.lstrip("- ").split()))
    print(
        f"- profile {profile.name}: {profile.source}; the free constant, GEMM efficiency, fitted on EP8 "
        f"`bal`: {efficiency:.3f} (the profile assumes {profile.efficiency:.2f}); {steps} steps replayed a "
        "layout\n"
    )


def print_ep8(r8: dict, t8: dict, costs8: dict) -> None:
    print("## EP8: predicted against measured, relative to `bal`\n")
    print(
        "| layout | r stated | r here | per-step r | measured (s) | measured vs bal | predicted step (ms) "
        "| MoE part (ms) | predicted vs bal | miss (points) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    order = sorted(MEASURED_EP8, key=lambda n: MEASURED_EP8[n][0])
    misses = []
    for name in order:
        r, seconds = MEASURED_EP8[name]
        measured, predicted = seconds / MEASURED_EP8["bal"][1] - 1, t8[name][0] / t8["bal"][0] - 1
        misses.append(100 * (predicted - measured))
        print(
            f"| {name} | {r:.3f} | {r8[name]:.3f} | {step_ratio(costs8[name][0]):.3f} | {seconds:.2f} "
            f"| {measured:+.2%} "
            f"| {t8[name][0] * 1e3:.1f} | {t8[name][1] * 1e3:.1f} | {predicted:+.2%} | {misses[-1]:+.2f} |"
        )
    a, b, k = hinge(np.array([r8[n] for n in order]), np.array([t8[n][0] for n in order]))
    within = sum(abs(m) <= 1.5 for m in misses[1:])
    print(
        f"\n{within} of {len(misses) - 1} layouts within 1.5 points of the measured change. Hinge fitted to "
        f"the predicted steps: T = {a * 1e3:.1f} ms + {b * 1e3:.1f} ms x max(0, r - {k:.3f}); knee {k:.3f} "
        f"against the measured {MEASURED_EP8_HINGE} (miss {k - MEASURED_EP8_HINGE:+.3f}); relative slope "
        f"b / a {b / a:.3f} against the measured 0.285.\n"
    )


def print_ep4(r4: dict, t4: dict, costs4: dict, steps_run: int) -> None:
    print("## EP4, the same constant\n")
    print("| layout | r here | per-step r | predicted step (ms) | MoE part (ms) | predicted vs bal |")
    print("|---|---|---|---|---|---|")
    order = sorted(r4, key=lambda n: (r4[n], n))
    for name in order:
        change = t4[name][0] / t4["bal"][0] - 1
        ratio = step_ratio(costs4[name][0])
        print(
            f"| {name} | {r4[name]:.3f} | {ratio:.3f} | {t4[name][0] * 1e3:.1f} | {t4[name][1] * 1e3:.1f} "
            f"| {change:+.2%} |"
        )
    _, _, knee = hinge(np.array([r4[n] for n in order]), np.array([t4[n][0] for n in order]))
    identity = t4["identity"][0] / t4["bal"][0] - 1
    measured = MEASURED_EP4["identity"] / MEASURED_EP4["bal"] - 1
    print(
        f"\nHinge fitted to the predicted steps: knee {knee:.3f} against the measured "
        f"{MEASURED_EP4['hinge']} (miss {knee - MEASURED_EP4['hinge']:+.3f}); identity vs bal "
        f"{identity:+.2%} against the measured {measured:+.2%} (miss {100 * (identity - measured):+.2f} "
        f"points); predicted total at bal {t4['bal'][0] * steps_run:.1f} s",
        f"against the measured {MEASURED_EP4['bal']:.2f} s.\n",
    )


def print_235b(counts: np.ndarray, fitted, args) -> None:
    layers, experts = counts.shape
    plans = {
        "bal": np.stack([balanced(c, 8) for c in counts]),
        "identity": np.tile(np.arange(experts) // (experts // 8), (layers, 1)),
    }
    costs = predicted_steps(counts, plans, Setting("Qwen/Qwen3-235B-A22B", 8, 512, args.steps), args.seed)
    t = times(costs, fitted)
    r = {name: average_ratio(plan, counts, 8) for name, plan in plans.items()}
    print("## Prediction: Qwen3-235B-A22B at EP8, identity against balanced\n")
    print(
        f"Requests of 512 tokens (the study's L512 set), otherwise as above, with the EP8 constant. r: "
        f"identity {r['identity']:.3f}, bal {r['bal']:.3f}. Predicted whole step "
        f"{t['identity'][0] * 1e3:.1f} vs {t['bal'][0] * 1e3:.1f} ms (MoE part "
        f"{t['identity'][1] * 1e3:.1f} vs {t['bal'][1] * 1e3:.1f}):",
        f"identity {t['identity'][0] / t['bal'][0] - 1:+.2%} against balanced.\n",
    )


if __name__ == "__main__":
    main()

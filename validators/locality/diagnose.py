"""``moeplace diagnose``: does a trace's routing have locality worth exploiting, and which lever fits?

Per MoE layer, then overall (means over layers):

- structure: co-activation Gini, clustering gain into G groups, the same under the shuffle null;
- next-token prefetch hit rate at budgets B, LFU vs co-activation (fit on first halves of the
  documents, scored on second halves);
- a capacity-C expert cache replaying the second halves (their first ``CACHE_TOKENS`` tokens):
  LRU, static LFU, a co-activation prefetcher (min(k, C - k) experts after each token, its loads
  counted), Belady's optimum;
- local routing consistency: SRP and SCH over segment lengths;
- a quick held-out static plan (greedy-capped, eps 0.1, half the documents each side) against
  frequency-balanced placement;
- a verdict per layer and overall, each clause backed by those numbers (see ``verdict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from moeplace.calibrate.split import split_documents
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.trace import Trace
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import yaml_safe
from moeplace.planner.plan import least_tolerance, plan
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.topology import Topology
from moeplace.validators.locality.cache import POLICIES, simulate_policies
from moeplace.validators.locality.consistency import (
    segment_cache_best_hit_rate,
    segment_routing_best_performance,
)
from moeplace.validators.locality.prefetch import document_halves, prefetch_hit_rates
from moeplace.validators.locality.structure import (
    clustering_gain,
    coactivation,
    coactivation_gini,
    shuffled,
    token_expert_matrix,
)
from moeplace.validators.report import validate

# Thresholds of the verdict (documented in the report): what "pays" means.
STRUCTURE_EXCESS = 0.2  # clustering gain above the shuffle null
PLACEMENT_GAIN = 0.05  # held-out dev/token reduction vs frequency, at most +0.05 max/mean
LOAD_SLACK = 0.05
# Belady's optimum is a sequential simulation, so every cache policy replays the same bounded
# window: the first CACHE_TOKENS tokens of the held-out halves.
CACHE_TOKENS = 50_000


MAX_SEGMENT = 4096  # tokens in a segment of SRP/SCH: past a long document's length


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to measure: groups G, budgets B, cache capacities C (multiples of k by default),
    segment lengths m, the SCH cache (about twice the active experts), devices of the quick plan."""

    groups: int = 8
    budgets: Sequence[int] = ()
    capacities: Sequence[int] = ()
    segment_lengths: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
    sch_cache: int = 0
    devices: int = 8
    seed: int = 0

    def resolved(self, num_experts: int, top_k: int) -> Settings:
        """Defaults that depend on the model: B and C in multiples of k, SCH cache 2k, G and D <= N."""
        fit = [m * top_k for m in (1, 2, 3, 4) if m * top_k < num_experts]
        limits = {  # name: (values, the most any can be)
            "budgets": (self.budgets, num_experts),
            "capacities": (self.capacities, num_experts),
            "sch_cache": ([self.sch_cache], num_experts),
            "segment_lengths": (self.segment_lengths, MAX_SEGMENT),
            "groups": ([self.groups], num_experts),
            "devices": ([self.devices], num_experts),
        }
        for name, (values, most) in limits.items():
            if any(not 0 <= v <= most for v in values):
                raise MoeplaceError(f"{{={name}}} must be in 0..{most}, got {list(values)}")
        return dataclasses.replace(
            self,
            budgets=tuple(self.budgets) or tuple(fit),
            capacities=tuple(self.capacities) or tuple(fit),
            sch_cache=self.sch_cache or min(2 * top_k, num_experts),
            groups=_divisor_at_most(num_experts, self.groups),
            devices=_divisor_at_most(num_experts, self.devices),
        )


def _divisor_at_most(n: int, wanted: int) -> int:
    """The largest divisor of n that is at most ``wanted`` (equal groups need a divisor)."""
    return max(d for d in range(1, min(max(wanted, 1), n) + 1) if n % d == 0)


def diagnose(trace: Trace, settings: Settings, on_layer: Callable[[], None] | None = None) -> dict:
    """The report: ``{"settings", "layers": [per-layer figures], "overall", "verdict"}``."""
    meta = trace.meta
    settings = settings.resolved(meta.num_experts, meta.top_k)
    longest = int(np.diff(trace.doc_offsets).max(initial=0))
    lengths = tuple(m for m in settings.segment_lengths if m <= longest)  # segments stay in a document
    if not lengths:
        raise MoeplaceError(f"no segment length fits the longest document ({longest} tokens)")
    settings = dataclasses.replace(settings, segment_lengths=lengths)
    rng = np.random.default_rng(settings.seed)
    placement = _quick_plan(trace, settings)
    layers = []
    for position, layer_id in enumerate(meta.layer_ids):
        ids = np.asarray(trace.topk_ids[:, position, :])
        figures = {"layer": layer_id} | _layer(ids, trace.doc_offsets, meta.num_experts, settings, rng)
        figures["placement"] = placement[position]
        figures["verdict"] = verdict(figures, settings)
        layers.append(figures)
        if on_layer is not None:
            on_layer()
    overall = _mean_figures(layers)
    return {
        "model": meta.model,
        "tokens": trace.num_tokens,
        "documents": trace.num_documents,
        "settings": dataclasses.asdict(settings) | {"policies": list(POLICIES)},
        "layers": layers,
        "overall": overall | {"verdict": verdict(overall, settings)},
    }


def _layer(ids, doc_offsets, num_experts, settings: Settings, rng) -> dict:
    chosen = token_expert_matrix(ids, num_experts)
    gain = clustering_gain(chosen, settings.groups)
    null = clustering_gain(shuffled(chosen, rng), settings.groups)
    first, second = document_halves(doc_offsets)
    fit_load, fit_coact = chosen[first].sum(axis=0), coactivation(chosen[first])
    runs = [
        simulate_policies(
            ids[second],
            capacity,
            num_experts=num_experts,
            fit_load=fit_load,
            coact=fit_coact,
            prefetch=min(ids.shape[1], capacity - ids.shape[1]),  # into the room the token leaves
            max_tokens=CACHE_TOKENS,
        )
        for capacity in settings.capacities
    ]
    cache = {policy: [_cache_figures(run[policy]) for run in runs] for policy in POLICIES}
    return {
        "coactivation_gini": coactivation_gini(coactivation(chosen)),
        "clustering_gain": gain,
        "shuffle_null_gain": null,
        "excess_gain": gain - null,
        "prefetch": prefetch_hit_rates(ids, doc_offsets, num_experts, list(settings.budgets)),
        "cache": cache,
        "srp": [
            segment_routing_best_performance(ids, doc_offsets, num_experts, m)
            for m in settings.segment_lengths
        ],
        "sch": [
            segment_cache_best_hit_rate(ids, doc_offsets, num_experts, m, settings.sch_cache)
            for m in settings.segment_lengths
        ],
    }


def _cache_figures(result) -> dict:
    return {
        "miss_rate": result.miss_rate,
        "loads_per_activation": result.loads_per_activation,
        "tokens": result.tokens,
    }


def _quick_plan(trace: Trace, settings: Settings) -> list[dict]:
    """Per layer: held-out reduction and max/mean of greedy-capped (eps 0.1, or the least a hot
    expert allows: its balance floor) vs frequency."""
    fit, held = split_documents(trace, holdout_share=0.5, seed=settings.seed)
    stats = compute_statistics(fit, resamples=16, seed=settings.seed)
    topology = Topology(trace.meta.num_experts, settings.devices)
    tolerance = max(0.1, least_tolerance(stats, topology))
    placement = plan(stats, topology, "greedy-capped", SolverOptions(load_tolerance=tolerance), {})
    validation = validate(placement, held, allow_overlap=True)
    return yaml_safe(  # 6 digits, as the per-layer figures of ``validate --json``
        [
            {
                "devices": settings.devices,
                "load_tolerance": tolerance,
                "reduction": reduction,
                "max_mean_load": load,
                "baseline_max_mean_load": baseline_load,
            }
            for reduction, load, baseline_load in zip(
                validation.layer_reduction,
                validation.score.max_mean_load,
                validation.baseline.max_mean_load,
                strict=True,
            )
        ]
    )


def _mean_figures(layers: list[dict]) -> dict:
    """Means over layers of every number (nested dicts and lists alike)."""

    def mean(values):
        first = values[0]
        if isinstance(first, dict):
            return {key: mean([v[key] for v in values]) for key in first if key != "verdict"}
        if isinstance(first, list):
            return [mean([v[i] for v in values]) for i in range(len(first))]
        if first is None or isinstance(first, str):
            return first
        return float(np.mean(values))

    return mean([{k: v for k, v in layer.items() if k not in ("layer", "verdict")} for layer in layers])


def verdict(figures: dict, settings: Settings) -> dict:
    """Plain statements per lever, each with the numbers behind it."""
    structure = figures["excess_gain"]
    place = figures["placement"]
    pays = place["reduction"] >= PLACEMENT_GAIN and (
        place["max_mean_load"] <= place["baseline_max_mean_load"] + LOAD_SLACK
    )
    middle = len(settings.capacities) // 2
    capacity = settings.capacities[middle]
    lru, lfu, pre, opt = (figures["cache"][p][middle] for p in POLICIES)
    budget = len(settings.budgets) // 2
    coact_hit, lfu_hit = figures["prefetch"]["coact"][budget], figures["prefetch"]["lfu"][budget]
    teams = structure >= STRUCTURE_EXCESS
    lru_wins = lru["miss_rate"] <= lfu["miss_rate"]
    prefetch_pays = pre["loads_per_activation"] < lru["loads_per_activation"]
    return {
        "structure": (
            f"{'Experts fire in teams' if teams else 'Little co-activation structure'}: clustering gain "
            f"{figures['clustering_gain']:.2f}, against {figures['shuffle_null_gain']:.2f} when tokens' "
            "experts are shuffled."
        ),
        "static_placement": (
            f"Static placement {'pays' if pays else 'does not pay'} here: {place['reduction']:+.1%} devices "
            f"per token against frequency-balanced placement at D = {int(place['devices'])} on held-out "
            f"documents, at max/mean load {place['max_mean_load']:.3f} "
            f"(frequency {place['baseline_max_mean_load']:.3f})."
        ),
        "dynamic_cache": (
            f"A cache of {capacity} experts a layer misses {lru['miss_rate']:.1%} of activations under LRU, "
            f"{lfu['miss_rate']:.1%} holding the most-used experts and {opt['miss_rate']:.1%} at best "
            f"(Belady): {'LRU' if lru_wins else 'a fixed most-used set'} is the better of the two"
            + (", and no policy avoids many misses." if opt["miss_rate"] >= 0.2 else ".")
        ),
        "prefetch": (
            f"Prefetching co-firing experts {'pays' if prefetch_pays else 'is not worth its bandwidth'}: "
            f"{pre['loads_per_activation']:.3f} loads per activation ({pre['miss_rate']:.3f} on demand) "
            f"against LRU's {lru['loads_per_activation']:.3f}; next-token hit rate with "
            f"{settings.budgets[budget]} prefetched {coact_hit:.3f}, against {lfu_hit:.3f} for the most-used."
        ),
    }

"""Validation of a placement on a held-out trace, beside the frequency-balanced baseline."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from moeplace.calibrate.stats import expert_load
from moeplace.calibrate.trace import Trace, TraceMeta
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement, yaml_safe
from moeplace.planner.solvers import BASELINE
from moeplace.planner.solvers.eplb import eplb_slots
from moeplace.planner.solvers.frequency import frequency_placement
from moeplace.planner.topology import Topology
from moeplace.validators.evidence import Evidence, check_evidence
from moeplace.validators.metrics import balance_floor, devices_lower_bound, random_expected_devices
from moeplace.validators.profile import ModelShape, Profile, StepTime, step_time
from moeplace.validators.score import Score, score_placement
from moeplace.validators.step import StepCost, Workload, step_cost


@dataclasses.dataclass(frozen=True)
class Validation:
    """A placement and its baseline scored on the same held-out tokens."""

    placement: Placement
    holdout: Trace
    score: Score
    baseline: Score
    baseline_slots: np.ndarray  # int [L, P]: the baseline's expert in each slot
    evidence: Evidence | None = None  # what the held-out trace shares with the calibration

    @property
    def baseline_name(self) -> str:
        return baseline_solver(self.placement.topology)

    @property
    def reduction(self) -> float:
        """1 - dev/token(placement) / dev/token(baseline), means over layers."""
        return 1.0 - self.score.dev_per_token.mean() / self.baseline.dev_per_token.mean()

    @property
    def layer_reduction(self) -> np.ndarray:
        """float ``[L]``: 1 - dev/token(placement) / dev/token(baseline), per MoE layer."""
        return 1.0 - self.score.dev_per_token / self.baseline.dev_per_token

    @property
    def random_expected_dev_per_token(self) -> float:
        """For scale: the devices per token a random placement expects."""
        topology = self.placement.topology
        return random_expected_devices(topology.num_experts, topology.num_devices, self.placement.top_k)

    @property
    def dev_per_token_lower_bound(self) -> int:
        """For scale: no placement goes below top-k over the experts a device holds."""
        return devices_lower_bound(self.placement.top_k, self.placement.topology.slots_per_device)

    @functools.cached_property
    def balance_floor(self) -> float:
        """For scale: the lowest held-out max/mean load any placement reaches, mean over layers."""
        held_load = expert_load(self.holdout)
        num_devices = self.placement.topology.num_devices
        return float(np.mean([balance_floor(x, num_devices) for x in held_load]))

    @property
    def groups_per_token(self) -> int | None:
        """The routing's group limit on the nodes a token reaches, where the placement spans nodes."""
        if self.holdout.meta.group_limit and self.placement.num_nodes > 1:
            return self.holdout.meta.groups_per_token
        return None

    def summary(self) -> dict:
        """The headline figures and their context, YAML/JSON-safe: what the placement file records
        and ``validate --json`` prints (the typed figures are the properties above)."""
        return yaml_safe(
            dataclasses.asdict(self.score.headline)
            | {
                "reduction": self.reduction,
                "baseline": {
                    "solver": self.baseline_name,
                    **dataclasses.asdict(self.baseline.headline),
                    "reduction": 0.0,
                },
                "random_expected_dev_per_token": self.random_expected_dev_per_token,
                "dev_per_token_lower_bound": self.dev_per_token_lower_bound,
                "balance_floor": self.balance_floor,
                "holdout": self.holdout.provenance()
                | ({} if self.evidence is None else self.evidence.summary()),
                **({} if self.groups_per_token is None else {"groups_per_token": self.groups_per_token}),
            }
        )

    def recorded_placement(self) -> Placement:
        """The placement with these held-out figures recorded in it: saved with the placement and
        read back by ``load_placement`` (as ``plan --holdout`` writes it)."""
        return dataclasses.replace(self.placement, validation=self.summary())

    def layers(self) -> list[dict]:
        """Per-layer figures (YAML/JSON-safe)."""
        s, b, reduction = self.score, self.baseline, self.layer_reduction
        return yaml_safe(
            [
                {
                    "layer": layer_id,
                    "dev_per_token": s.dev_per_token[i],
                    "node_per_token": s.node_per_token[i],
                    "load_cv": s.load_cv[i],
                    "max_mean_load": s.max_mean_load[i],
                    "baseline_dev_per_token": b.dev_per_token[i],
                    "baseline_node_per_token": b.node_per_token[i],
                    "baseline_load_cv": b.load_cv[i],
                    "baseline_max_mean_load": b.max_mean_load[i],
                    "reduction": reduction[i],
                }
                for i, layer_id in enumerate(self.placement.layer_ids)
            ]
        )


def check_compatible(placement: Placement, meta: TraceMeta) -> None:
    """Raise ``MoeplaceError`` unless ``meta`` describes routing of the placement's model layers."""
    if (meta.num_experts, meta.top_k) != (placement.num_experts, placement.top_k):
        raise MoeplaceError(
            f"trace has {meta.num_experts} experts, top-{meta.top_k}; the placement is for "
            f"{placement.num_experts} experts, top-{placement.top_k}"
        )
    if tuple(meta.layer_ids) != placement.layer_ids:
        raise MoeplaceError(
            f"trace has MoE layers {list(meta.layer_ids)}; the placement has {list(placement.layer_ids)}"
        )


def baseline_solver(topology: Topology) -> str:
    """What a placement is measured against: frequency-balanced packing, or DeepSeek's EPLB where
    one copy of each expert cannot fill the devices evenly (D does not divide N)."""
    return BASELINE if topology.one_copy_fits else "eplb"


def baseline_topology(topology: Topology) -> Topology:
    """The slots the baseline fills: without replicas, unless it is EPLB (``baseline_solver``)."""
    return topology.without_replicas if topology.one_copy_fits else topology


def baseline_placement(load: np.ndarray, topology: Topology) -> np.ndarray:
    """int ``[L, P]``: the baseline's expert in each slot, fit on expert load ``[L, N]``."""
    if not topology.one_copy_fits:
        return eplb_slots(load, topology)
    plain = baseline_topology(topology)
    return np.argsort(np.stack([frequency_placement(x, plain) for x in load]), axis=1, kind="stable")


def validate(
    placement: Placement,
    holdout: Trace,
    baseline_load: np.ndarray | None = None,
    *,
    allow_overlap: bool = False,
    allow_model_mismatch: bool = False,
) -> Validation:
    """Score ``placement`` and the baseline (``baseline_solver``) on ``holdout``.

    The baseline is fit on ``baseline_load`` (int ``[L, N]``) or, by default, on the calibration
    load recorded in the placement: the same calibration data the placement was fit on. A
    ``holdout`` holding calibration documents, or routed by another model, is refused unless
    allowed (``validators/evidence.py``); ``Validation.evidence`` says what was found.
    """
    check_compatible(placement, holdout.meta)
    if holdout.num_tokens == 0:
        raise MoeplaceError("the held-out trace holds no tokens: nothing to score")
    evidence = check_evidence(placement, holdout, allow_overlap, allow_model_mismatch)
    load = placement.calibration_load if baseline_load is None else baseline_load
    topology = placement.topology
    baseline = baseline_placement(load, topology)
    score = score_placement(placement.physical_to_logical, holdout, topology)
    if baseline_topology(topology) == topology and np.array_equal(baseline, placement.physical_to_logical):
        baseline_score = score  # the placement is its own baseline (EPLB, or frequency): score it once
    else:
        baseline_score = score_placement(baseline, holdout, baseline_topology(topology))
    return Validation(placement, holdout, score, baseline_score, baseline, evidence)


@dataclasses.dataclass(frozen=True)
class StepSetting:
    """How to replay and time serving steps: the workload, hardware profile, model sizes, and
    whether communication overlaps compute."""

    workload: Workload
    profile: Profile
    shape: ModelShape
    overlap: bool = True

    def summary(self) -> dict:
        """The setting as a placement file records it."""
        return dataclasses.asdict(self.workload) | {
            "overlap": self.overlap,
            "profile": self.profile.name,
            "hidden": self.shape.hidden,
            "intermediate": self.shape.intermediate,
            "model_sizes": self.shape.source,
            "whole_step": self.shape.whole,
        }

    def replay(
        self, physical_to_logical: np.ndarray, trace: Trace, topology: Topology
    ) -> tuple[StepCost, StepTime]:
        """The counts and the estimated time of ``trace``'s steps on a placement, int ``[L, P]``."""
        cost = step_cost(physical_to_logical, trace, topology, self.workload)
        return cost, step_time(cost, self.shape, self.profile, self.workload.kernel)


# the step gate's default: a placement may be at most 1% slower than the better balancer, the
# step model being a model (validate, plan --holdout and compare with --step)
MIN_STEP_SPEEDUP = -0.01


def step_gate_minimum(min_speedup: float | None) -> float:
    """The step gate's minimum speedup: ``min_speedup`` as given, else ``MIN_STEP_SPEEDUP``."""
    return MIN_STEP_SPEEDUP if min_speedup is None else min_speedup


@dataclasses.dataclass(frozen=True)
class StepComparison:
    """The serving step of a placement and of the frequency baseline on the same held-out steps
    (``step_time`` seconds per step, summed over layers; ``step_cost`` counts behind them)."""

    setting: StepSetting
    time: StepTime
    baseline_time: StepTime
    cost: StepCost
    baseline_cost: StepCost
    eplb_time: StepTime  # DeepSeek's EPLB with the placement's slots and nodes, fit on the same load
    baseline_name: str = BASELINE

    @property
    def overlap(self) -> bool:
        return self.setting.overlap

    @property
    def speedup(self) -> float:
        """1 - step time / the baseline's step time."""
        return 1.0 - self.time.total(self.overlap) / self.baseline_time.total(self.overlap)

    @property
    def moe_speedup(self) -> float:
        """1 - the MoE part of the step / the baseline's MoE part (what ``speedup`` dilutes by the
        rest of the step, which no placement changes)."""
        return 1.0 - self.time.moe(self.overlap) / self.baseline_time.moe(self.overlap)

    @property
    def speedup_vs_eplb(self) -> float:
        """1 - step time / EPLB's step time."""
        return 1.0 - self.time.total(self.overlap) / self.eplb_time.total(self.overlap)

    @property
    def best_balancer(self) -> str:
        """The load balancer with the shorter step: the baseline or ``eplb`` (the baseline on a tie)."""
        eplb_faster = self.eplb_time.total(self.overlap) < self.baseline_time.total(self.overlap)
        return "eplb" if eplb_faster else self.baseline_name

    @property
    def speedup_vs_best(self) -> float:
        """1 - step time / the better balancer's step time: what the step gate reads."""
        return self.speedup_vs_eplb if self.best_balancer == "eplb" else self.speedup

    def verdict(self, min_speedup: float | None = None) -> str | None:
        """Why the step fails the gate (its speedup against the better balancer below
        ``min_speedup``, by default ``MIN_STEP_SPEEDUP``), or None when it passes."""
        min_speedup = step_gate_minimum(min_speedup)
        if self.speedup_vs_best >= min_speedup:
            return None
        best = (self.eplb_time if self.best_balancer == "eplb" else self.baseline_time).total(self.overlap)
        ours = self.time.total(self.overlap)
        return (
            f"estimated {self.step_noun} {ours * 1e3:.3f} ms vs {self.best_balancer} {best * 1e3:.3f} ms, "
            f"the better balancer: speedup {self.speedup_vs_best:+.1%}, below the minimum {min_speedup:+.1%}"
        )

    @property
    def step_noun(self) -> str:
        """What the step times cover: a whole step, or the MoE part alone when the model's other
        sizes are unknown."""
        return "whole step" if self.setting.shape.whole else "step (MoE part only)"

    def summary(self) -> dict:
        def times(t: StepTime) -> dict:
            return dataclasses.asdict(t) | {"moe": t.moe(self.overlap), "step": t.total(self.overlap)}

        return yaml_safe(
            {
                "model": self.setting.profile.assumptions(),
                "workload": dataclasses.asdict(self.setting.workload) | {"overlap": self.overlap},
                "seconds": times(self.time),
                "baseline_seconds": times(self.baseline_time),
                "eplb_seconds": times(self.eplb_time),
                "whole_step": self.setting.shape.whole,
                "speedup": self.speedup,
                "moe_speedup": self.moe_speedup,
                "speedup_vs_eplb": self.speedup_vs_eplb,
                "best_balancer": self.best_balancer,
                "speedup_vs_best_balancer": self.speedup_vs_best,
                "traffic": self.cost.summary(),
                "baseline_traffic": self.baseline_cost.summary(),
            }
        )


def compare_steps(validation: Validation, setting: StepSetting) -> StepComparison:
    """Replay the held-out trace as serving steps on the placement and on its baseline."""
    placement, held = validation.placement, validation.holdout
    topology = placement.topology
    cost, time = setting.replay(placement.physical_to_logical, held, topology)
    baseline_cost, baseline_time = setting.replay(
        validation.baseline_slots, held, baseline_topology(topology)
    )
    groups = placement.options.get("routing_groups", 1)  # hierarchical EPLB for a grouped placement
    eplb = eplb_slots(placement.calibration_load, topology, groups)
    _, eplb_time = setting.replay(eplb, held, topology)
    return StepComparison(
        setting, time, baseline_time, cost, baseline_cost, eplb_time, validation.baseline_name
    )


def gate_failures(
    validation: Validation, max_load_ratio: float | None, min_reduction: float | None
) -> list[str]:
    """Why a validation fails the gates (empty when it passes): held-out max/mean load above
    ``max_load_ratio``, reduction in dev/token below ``min_reduction`` (None: not gated). An
    undefined figure (NaN) fails every gate that reads it."""
    failures = []
    load = validation.score.headline.max_mean_load
    if max_load_ratio is not None and not load <= max_load_ratio:
        failures.append(f"max/mean device load {load:.4f} exceeds the limit {max_load_ratio:g}")
    if min_reduction is not None and not validation.reduction >= min_reduction:
        failures.append(
            f"dev/token reduction {validation.reduction:.4f} vs {validation.baseline_name} is below the "
            f"minimum {min_reduction:g}"
        )
    return failures

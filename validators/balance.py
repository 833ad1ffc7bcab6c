"""Validation on load records: a placement's device balance on each held-out workload, beside EPLB's.

Load records (``moeplace import sglang-load``) say how many tokens each expert served, not which
tokens: there are no devices per token to score, only balance. Each held-out workload is scored on
its own, because balance is lost between workloads: per MoE layer the busiest device over the mean
(a replicated expert's load split evenly over its copies), then the mean over layers; the headline
is the mean over workloads, beside the worst workload. The baseline is DeepSeek's EPLB on the same
slots, fit on the calibration load recorded in the placement (the workloads' pooled shares),
hierarchical when the placement keeps routing groups on nodes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moeplace.calibrate.stats import Statistics
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement, yaml_safe
from moeplace.planner.solvers.eplb import eplb_slots
from moeplace.planner.workloads import REPLICA_LOAD
from moeplace.validators.evidence import Evidence, check_evidence
from moeplace.validators.metrics import slot_device_load
from moeplace.validators.report import check_compatible


@dataclasses.dataclass(frozen=True)
class BalanceValidation:
    """A placement and the EPLB baseline on held-out load records.

    Attributes:
        workloads: the held-out workloads' labels ``[W]``.
        max_mean_load: float ``[W, L]`` busiest device over mean, per workload and MoE layer.
        baseline_max_mean_load: float ``[W, L]``, the same for the baseline.
        baseline_name: ``eplb`` (global) or ``eplb-hierarchical`` (groups on nodes).
    """

    placement: Placement
    holdout: Statistics
    workloads: tuple[str, ...]
    max_mean_load: np.ndarray
    baseline_max_mean_load: np.ndarray
    baseline_name: str
    evidence: Evidence | None = None

    @property
    def workload_max_mean_load(self) -> np.ndarray:
        """float ``[W]``: each workload's max/mean load, mean over layers."""
        return self.max_mean_load.mean(axis=1)

    @property
    def baseline_workload_max_mean_load(self) -> np.ndarray:
        """float ``[W]``: the same for the baseline."""
        return self.baseline_max_mean_load.mean(axis=1)

    def summary(self) -> dict:
        """Headline (mean over workloads of each's mean over layers), worst workload, and each
        workload's figures, YAML/JSON-safe: what ``validate --json`` prints (the typed figures are
        the arrays and properties above)."""
        ours, base = self.workload_max_mean_load, self.baseline_workload_max_mean_load
        return yaml_safe(
            {
                "max_mean_load": ours.mean(),
                "worst_workload_max_mean_load": ours.max(),
                "baseline": {
                    "solver": self.baseline_name,
                    "max_mean_load": base.mean(),
                    "worst_workload_max_mean_load": base.max(),
                },
                "workloads": {
                    label: {
                        "max_mean_load": ours[w],
                        "worst_layer_max_mean_load": self.max_mean_load[w].max(),
                        "baseline_max_mean_load": base[w],
                    }
                    for w, label in enumerate(self.workloads)
                },
                "replica_load": REPLICA_LOAD,
                "holdout": {"load_only": True, **self.holdout.provenance()}
                | ({} if self.evidence is None else self.evidence.summary()),
            }
        )

    def layers(self) -> list[dict]:
        """Per MoE layer, the mean over workloads of both placements' max/mean (JSON-safe)."""
        ours, base = self.max_mean_load.mean(axis=0), self.baseline_max_mean_load.mean(axis=0)
        return yaml_safe(
            [
                {"layer": layer_id, "max_mean_load": ours[i], "baseline_max_mean_load": base[i]}
                for i, layer_id in enumerate(self.placement.layer_ids)
            ]
        )


def validate_balance(
    placement: Placement,
    holdout: Statistics,
    baseline_load: np.ndarray | None = None,
    *,
    allow_overlap: bool = False,
    allow_model_mismatch: bool = False,
) -> BalanceValidation:
    """Score ``placement`` and EPLB on each workload of ``holdout`` (one workload, its load, when
    the statistics keep none apart). EPLB is fit on ``baseline_load`` int ``[L, N]`` or, by
    default, on the calibration load recorded in the placement. A calibration workload among
    ``holdout``'s, or another model's records, is refused unless allowed (``evidence.py``)."""
    check_compatible(placement, holdout.meta)
    evidence = check_evidence(placement, holdout, allow_overlap, allow_model_mismatch)
    if holdout.workload_load is None:
        labels, loads = ("all",), holdout.load[None]
    else:
        labels, loads = holdout.workloads, holdout.workload_load
    if not np.all(loads.sum(axis=2) > 0):
        raise MoeplaceError("a held-out workload counts nothing at some MoE layer: nothing to score there")
    topology = placement.topology
    groups = placement.groups_on_nodes
    fit = placement.calibration_load if baseline_load is None else baseline_load
    baseline = eplb_slots(fit, topology, groups)
    ratios = [
        max_over_mean(slots, loads, topology.num_devices)
        for slots in (placement.physical_to_logical, baseline)
    ]
    name = "eplb-hierarchical" if groups > 1 else "eplb"
    return BalanceValidation(placement, holdout, tuple(labels), *ratios, name, evidence)


def max_over_mean(slots: np.ndarray, loads: np.ndarray, num_devices: int) -> np.ndarray:
    """float ``[W, L]``: busiest device over mean for slots ``[L, P]`` and loads ``[W, L, N]``."""
    per_device = np.stack(
        [slot_device_load(row, loads[:, layer], num_devices) for layer, row in enumerate(slots)], axis=1
    )  # [W, L, D]
    return per_device.max(axis=2) / per_device.mean(axis=2)

"""Watch a served placement on recent traffic: is it still the traffic it was planned for?

Recent traffic comes as expert loads (a serving engine's load records, e.g. SGLang ``stat`` dumps
imported as statistics) and, where per-token routing was recorded, as traces. From the loads
alone: each layer's max/mean device load now, against the same at calibration (the load recorded
in the placement) and against what a load rebalance would reach (frequency-balanced placement of
the recent load itself). From traces: whether co-locating still cuts devices per token on this
traffic. The verdict is one of

- ``keep``: load holds within the limit (by default, what the calibration traffic itself would
  show in records of this size, plus a slack);
- ``re-plan``: load drifted past it, but co-location still pays: re-plan with few moves
  (``moeplace.planner.replan``);
- ``rebalance``: load drifted past it and co-location no longer pays (or the records cannot tell):
  balance load on the recent traffic (``frequency`` or ``eplb``).

A replicated expert's recent load is split evenly over its replicas (the dispatch policy evens
them out in service; load records do not say which replica a token took).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moeplace.calibrate.trace import Trace
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement
from moeplace.validators.metrics import max_mean_load, slot_device_load
from moeplace.validators.report import baseline_placement, validate

DRIFT_SLACK = 0.05  # default limit: calibration max/mean + this
CO_LOCATION_PAYS = 0.05  # a re-plan is worth its moves while co-location cuts this much dev/token


@dataclasses.dataclass(frozen=True)
class Watch:
    """Per MoE layer ``[L]``: max/mean device load at calibration, what calibration traffic would
    show in records this size (``sampling_noise``), on the recent traffic, and after a load
    rebalance of the recent traffic; ``reduction``: dev/token against frequency-balanced
    placement of the recent load, on the recent traces (None from loads alone); the ``limit`` the
    mean max/mean is held to, and the verdict."""

    layer_ids: tuple[int, ...]
    calibration: np.ndarray
    expected: np.ndarray
    recent: np.ndarray
    rebalanced: np.ndarray
    activations: int
    reduction: float | None
    limit: float
    action: str
    verdict: str

    def summary(self) -> dict:
        """JSON-safe figures, means over layers."""
        return {
            "action": self.action,
            "verdict": self.verdict,
            "limit": self.limit,
            "max_mean_load": {
                "calibration": float(self.calibration.mean()),
                "expected_at_this_size": float(self.expected.mean()),
                "recent": float(self.recent.mean()),
                "rebalanced": float(self.rebalanced.mean()),
                "worst_layer_recent": float(self.recent.max()),
            },
            "reduction": self.reduction,
            "activations": self.activations,
        }


def device_load(placement: Placement, load: np.ndarray) -> np.ndarray:
    """Load of each device, float ``[L, D]``, from expert load ``[L, N]``; a replicated expert's
    load split evenly over its slots."""
    slots = placement.physical_to_logical  # [L, P]
    return np.stack(
        [slot_device_load(row, x, placement.num_devices) for row, x in zip(slots, load, strict=True)]
    )


def sampling_noise(placement: Placement, activations: np.ndarray, draws: int = 32) -> np.ndarray:
    """Per layer ``[L]``, the max/mean device load that ``activations`` (int ``[L]``) drawn from the
    calibration load alone reach in 19 of 20 draws: the calibration traffic, seen through a record
    this small. Few records put the busiest device above the calibration figure with no drift at
    all; a fixed limit would call that drift. Independent draws (real traffic is burstier) make
    this a floor, and ``DRIFT_SLACK`` covers the rest."""
    rng = np.random.default_rng(0)
    calibration = placement.calibration_load.astype(np.float64)
    slots, devices = placement.physical_to_logical, placement.num_devices
    noise = []
    for layer, count in enumerate(activations.tolist()):
        share = calibration[layer] / calibration[layer].sum()
        sampled = rng.multinomial(count, share, size=draws)  # [draws, N]
        per_device = slot_device_load(slots[layer], sampled, devices)  # [draws, D]
        noise.append(np.percentile(per_device.max(axis=1) / per_device.mean(axis=1), 95))
    return np.array(noise)


def watch(
    placement: Placement, load: np.ndarray, traces: list[Trace], max_load_ratio: float | None = None
) -> Watch:
    """Judge ``placement`` on recent expert ``load`` int ``[L, N]`` (every recent record summed)
    and the recent ``traces`` among them (may be empty); ``max_load_ratio``: the limit on mean
    max/mean load (default: ``sampling_noise`` at the records' size + ``DRIFT_SLACK``)."""
    if load.shape != placement.calibration_load.shape:
        raise MoeplaceError(
            f"recent load has shape {load.shape}; the placement {placement.calibration_load.shape}"
        )
    if not load.sum():
        raise MoeplaceError("the recent records hold no expert activations")
    calibration = np.array([max_mean_load(x) for x in device_load(placement, placement.calibration_load)])
    recent = np.array([max_mean_load(x) for x in device_load(placement, load)])
    balanced = baseline_placement(load, placement.topology)  # [L, P]: the load balancer, refit
    rebalanced = np.array(
        [
            max_mean_load(slot_device_load(row, x, placement.num_devices))
            for row, x in zip(balanced, load, strict=True)
        ]
    )
    reduction = _reduction(placement, load, traces)
    expected = sampling_noise(placement, load.sum(axis=1))
    limit = max_load_ratio if max_load_ratio is not None else float(expected.mean()) + DRIFT_SLACK
    figures = recent.mean(), calibration.mean(), rebalanced.mean()
    action, verdict = _verdict(*figures, limit, reduction, placement.num_experts // 8)
    return Watch(
        placement.layer_ids,
        calibration,
        expected,
        recent,
        rebalanced,
        int(load.sum()),
        reduction,
        limit,
        action,
        verdict,
    )


def _reduction(placement: Placement, load: np.ndarray, traces: list[Trace]) -> float | None:
    """Dev/token against frequency-balanced placement of the recent load, token-weighted over
    the traces (None without traces)."""
    if not traces:
        return None
    # recent traffic, whatever it shares with the calibration: a watch, not a held-out claim
    scored = [
        (validate(placement, t, baseline_load=load, allow_overlap=True).reduction, t.num_tokens)
        for t in traces
    ]
    return float(sum(r * n for r, n in scored) / sum(n for _, n in scored))


def _verdict(now, calibration, rebalanced, limit, reduction, moves) -> tuple[str, str]:
    """The action and a sentence that says why, with the figures behind it."""
    held = f"max/mean device load {now:.3f} now, {calibration:.3f} at calibration, limit {limit:.3f}"
    if now <= limit:
        return "keep", f"keep this placement: {held}."
    if reduction is not None and reduction >= CO_LOCATION_PAYS:
        return "re-plan", (
            f"re-plan with few moves (about {max(moves, 1)} a layer): {held}, while co-location still cuts "
            f"{reduction:.1%} devices per token on this traffic."
        )
    why = (
        f"co-location cuts only {reduction:.1%} devices per token on this traffic"
        if reduction is not None
        else "these records hold load only: record per-token routing to see whether a co-activation "
        "re-plan would pay"
    )
    return "rebalance", (f"rebalance load: {held}; balancing this load reaches {rebalanced:.3f} ({why}).")

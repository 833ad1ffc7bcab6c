"""Load caps for capped solvers, robust to the sampling noise of the calibration trace.

A capped placement keeps every device's load <= (1 + eps) x mean on the calibration trace and
on each of its bootstrap resamples (rows of ``LayerStats.load_resamples``). Fitting the cap to
one sample alone lets a co-activation objective pack devices right up to a cap that the sample's
noise flatters, and held-out load then overshoots it. Where even frequency-balanced packing cannot
meet (1 + eps) x mean in some scenario (a hot expert plus its device's other slots), that
scenario's cap is what frequency packing reaches: never demand more balance than the baseline has.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.solvers.frequency import frequency_placement
from moeplace.planner.topology import Topology


@dataclasses.dataclass(frozen=True)
class LoadCaps:
    """Scenario loads and their caps.

    Attributes:
        scenario_load: int64 ``[K, N]``; row 0 is the calibration load, rows 1.. its resamples.
        cap: int64 ``[K]`` largest device load allowed in each scenario.
        mean: float ``[K]`` mean device load in each scenario.
        tolerance: the eps the caps were made for.
    """

    scenario_load: np.ndarray
    cap: np.ndarray
    mean: np.ndarray
    tolerance: float

    @property
    def cap_ratio(self) -> float:
        """The calibration cap as a multiple of the mean device load."""
        return float(self.cap[0] / self.mean[0]) if self.mean[0] else 1.0

    @property
    def relaxed(self) -> bool:
        """True when the calibration cap had to rise above (1 + eps) x mean."""
        return bool(self.cap[0] > np.floor((1.0 + self.tolerance) * self.mean[0]))

    def info(self) -> dict:
        """What a capped solver reports about its cap (YAML-safe)."""
        return {"load_cap": round(self.cap_ratio, 6)} | relaxed_report(self.relaxed)


def relaxed_report(relaxed: bool) -> dict:
    """How a layer's solver report records whether its cap rose above (1 + eps) x mean."""
    return {"cap_relaxed": relaxed}


def was_relaxed(report: dict) -> bool:
    """Whether a layer's solver report (a solver's own, or read from a placement file) records
    a cap that rose above (1 + eps) x mean to what frequency packing reaches."""
    return bool(report.get("cap_relaxed", False))


def balance_floor(expert_load: np.ndarray, num_devices: int) -> float:
    """Lowest max/mean any one-slot-per-expert placement can reach: hottest expert x D / total.

    The device holding the hottest expert carries at least its load, whatever else it holds.
    """
    total = expert_load.sum()
    return float(max(1.0, expert_load.max() * num_devices / total)) if total else 1.0


def device_loads(expert_to_device: np.ndarray, scenario_load: np.ndarray, num_devices: int) -> np.ndarray:
    """Load of each device in each scenario, ``[K, D]``, for expert loads ``[K, N]``."""
    one_hot = np.zeros((expert_to_device.shape[0], num_devices), scenario_load.dtype)
    one_hot[np.arange(expert_to_device.shape[0]), expert_to_device] = 1
    return scenario_load @ one_hot


def load_caps(stats: LayerStats, topology: Topology, tolerance: float) -> LoadCaps:
    """Caps for ``stats`` at tolerance eps = ``tolerance`` (see the module docstring)."""
    scenario_load = np.concatenate([stats.load[None], stats.load_resamples]).astype(np.int64)
    mean = scenario_load.sum(axis=1) / topology.num_devices
    baseline = frequency_placement(stats.load, topology)
    baseline_max = device_loads(baseline, scenario_load, topology.num_devices).max(axis=1)
    cap = np.maximum(np.floor((1.0 + tolerance) * mean).astype(np.int64), baseline_max)
    return LoadCaps(scenario_load, cap, mean, tolerance)

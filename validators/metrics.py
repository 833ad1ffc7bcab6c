"""Placement metrics on token routing. Shapes: T tokens, k slots, N experts, D devices."""

from __future__ import annotations

import math

import numpy as np

from moeplace.planner.objective import devices_per_token, token_devices
from moeplace.planner.solvers.caps import balance_floor

__all__ = [
    "balance_floor",
    "device_load",
    "devices_lower_bound",
    "devices_per_token",
    "load_cv",
    "max_mean_load",
    "random_expected_devices",
    "slot_device_load",
    "token_devices",
]


def device_load(topk_ids: np.ndarray, expert_to_device: np.ndarray, num_devices: int) -> np.ndarray:
    """(token, expert) activations landing on each device, int64 ``[D]``."""
    devices = token_devices(topk_ids, expert_to_device)
    return np.bincount(devices[devices >= 0], minlength=num_devices)


def slot_device_load(slots: np.ndarray, load: np.ndarray, num_devices: int) -> np.ndarray:
    """One layer's device loads ``[..., D]`` from expert loads ``[..., N]`` and its physical slots
    ``slots`` int ``[P]`` (slot p on device ``p // (P / D)``), a replicated expert's load split
    evenly over its slots (as DeepSeek's EPLB assumes; load records do not say which copy served)."""
    copies = np.bincount(slots, minlength=load.shape[-1])
    per_slot = load[..., slots] / copies[slots]  # [..., P]
    return per_slot.reshape(*load.shape[:-1], num_devices, -1).sum(axis=-1)


def load_cv(load: np.ndarray) -> float:
    """Coefficient of variation of device load, std / mean over devices (0 = perfectly even)."""
    mean = load.mean()
    return float(load.std() / mean) if mean else 0.0


def max_mean_load(load: np.ndarray) -> float:
    """Straggler ratio: busiest device's load over the mean (1 = perfectly even)."""
    mean = load.mean()
    return float(load.max() / mean) if mean else 1.0


def random_expected_devices(num_experts: int, num_devices: int, top_k: int) -> float:
    """Expected dev/token of a uniformly random equal-count placement: D (1 - C(N - N/D, k) / C(N, k))."""
    slots = num_experts // num_devices
    return num_devices * (1.0 - math.comb(num_experts - slots, top_k) / math.comb(num_experts, top_k))


def devices_lower_bound(top_k: int, slots_per_device: int) -> int:
    """No token can touch fewer than ceil(k / slots) devices."""
    return -(-top_k // slots_per_device)

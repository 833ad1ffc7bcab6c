"""Score placements on a trace, per MoE layer and averaged over layers."""

from __future__ import annotations

import dataclasses

import numpy as np

from moeplace.calibrate.trace import Trace
from moeplace.validators.metrics import device_load, devices_per_token, load_cv, max_mean_load


@dataclasses.dataclass(frozen=True)
class Score:
    """Per-layer figures ``[L]`` on one trace; the headline figure is their mean over layers.

    Attributes:
        dev_per_token: mean distinct devices per token (over tokens with at least one expert).
        load_cv: std / mean of device load.
        max_mean_load: busiest device over mean.
        device_load: int64 ``[L, D]`` activations per device.
    """

    dev_per_token: np.ndarray
    load_cv: np.ndarray
    max_mean_load: np.ndarray
    device_load: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means over layers, plus the worst layer's max/mean load."""
        return {
            "dev_per_token": float(self.dev_per_token.mean()),
            "load_cv": float(self.load_cv.mean()),
            "max_mean_load": float(self.max_mean_load.mean()),
            "worst_layer_max_mean_load": float(self.max_mean_load.max()),
        }


def score_placement(expert_to_device: np.ndarray, trace: Trace, num_devices: int) -> Score:
    """Score ``expert_to_device`` (int ``[L, N]``) on every token of ``trace``, a chunk at a time."""
    num_layers = trace.num_layers
    devices = np.zeros(num_layers, np.int64)
    routed = np.zeros(num_layers, np.int64)
    loads = np.zeros((num_layers, num_devices), np.int64)
    offsets = trace.doc_offsets
    for first, end in trace.document_chunks(1 << 16):
        chunk = np.asarray(trace.topk_ids[offsets[first] : offsets[end]])
        for layer in range(num_layers):
            ids = chunk[:, layer, :]
            per_token = devices_per_token(ids, expert_to_device[layer])
            devices[layer] += per_token.sum()
            routed[layer] += np.count_nonzero(per_token)
            loads[layer] += device_load(ids, expert_to_device[layer], num_devices)
    return Score(
        dev_per_token=devices / np.maximum(routed, 1),
        load_cv=np.array([load_cv(x) for x in loads]),
        max_mean_load=np.array([max_mean_load(x) for x in loads]),
        device_load=loads,
    )

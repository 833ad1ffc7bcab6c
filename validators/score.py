"""Score placements on a trace, per MoE layer and averaged over layers."""

from __future__ import annotations

import dataclasses

import numpy as np

from moeplace.calibrate.trace import Trace, layer_chunks
from moeplace.planner.dispatch import dispatch, replica_devices
from moeplace.planner.objective import distinct_per_row, token_devices
from moeplace.planner.topology import Topology
from moeplace.validators.metrics import load_cv, max_mean_load


@dataclasses.dataclass(frozen=True)
class Headline:
    """A placement's figures over a whole trace: means over MoE layers of devices per token, nodes
    per token, load CV and max/mean device load, and the worst layer's max/mean load."""

    dev_per_token: float
    node_per_token: float
    load_cv: float
    max_mean_load: float
    worst_layer_max_mean_load: float
    most_nodes_a_token: int


@dataclasses.dataclass(frozen=True)
class Score:
    """Per-layer figures ``[L]`` on one trace; the headline figure is their mean over layers.

    Attributes:
        dev_per_token: mean distinct devices per token (over tokens with at least one expert).
        node_per_token: mean distinct nodes per token (cross-node fan-out; 1 with one node).
        most_nodes_a_token: int64, the most distinct nodes any one token reached.
        load_cv: std / mean of device load.
        max_mean_load: busiest device over mean.
        device_load: int64 ``[L, D]`` activations per device.
    """

    dev_per_token: np.ndarray
    node_per_token: np.ndarray
    most_nodes_a_token: np.ndarray
    load_cv: np.ndarray
    max_mean_load: np.ndarray
    device_load: np.ndarray

    @property
    def headline(self) -> Headline:
        """Means over layers, plus the worst layer's max/mean load."""
        return Headline(
            dev_per_token=float(self.dev_per_token.mean()),
            node_per_token=float(self.node_per_token.mean()),
            load_cv=float(self.load_cv.mean()),
            max_mean_load=float(self.max_mean_load.mean()),
            worst_layer_max_mean_load=float(self.max_mean_load.max()),
            most_nodes_a_token=int(self.most_nodes_a_token.max()),
        )


def score_placement(physical_to_logical: np.ndarray, trace: Trace, topology: Topology) -> Score:
    """Score a placement, int ``[L, P]`` expert of each physical slot (``Placement.physical_to_logical``),
    on every token of ``trace``, a chunk at a time; replicas are chosen by the dispatch policy."""
    num_layers, num_devices = trace.num_layers, topology.num_devices
    replicas = [
        replica_devices(row, topology.num_experts, topology.slots_per_device) for row in physical_to_logical
    ]
    devices = np.zeros(num_layers, np.int64)
    nodes = np.zeros(num_layers, np.int64)
    most_nodes = np.zeros(num_layers, np.int64)
    routed = np.zeros(num_layers, np.int64)
    loads = np.zeros((num_layers, num_devices))

    def score_layer(layer: int, ids: np.ndarray) -> None:
        """Add a chunk's tokens ``ids`` int ``[t, k]`` to ``layer``'s figures (its rows only)."""
        served = dispatch(ids, np.ones(ids.shape[0]), replicas[layer], num_devices, loads[layer])
        per_token = distinct_per_row(served)
        devices[layer] += per_token.sum()
        routed[layer] += np.count_nonzero(per_token)
        if topology.num_nodes == 1:  # every routed token touches the one node
            token_nodes = np.minimum(per_token, 1)
        else:
            token_nodes = distinct_per_row(token_devices(served, topology.node_of_device))
        nodes[layer] += token_nodes.sum()
        most_nodes[layer] = max(most_nodes[layer], token_nodes.max(initial=0))

    for chunk in layer_chunks(trace):
        chunk.map(score_layer)
    loads = loads.round().astype(np.int64)
    return Score(
        dev_per_token=devices / np.maximum(routed, 1),
        node_per_token=nodes / np.maximum(routed, 1),
        most_nodes_a_token=most_nodes,
        load_cv=np.array([load_cv(x) for x in loads]),
        max_mean_load=np.array([max_mean_load(x) for x in loads]),
        device_load=loads,
    )

"""Placements and their YAML file: versioned, human readable, verified on load.

Schema (version 1)::

    format: moeplace-placement
    version: 1
    model: openai/gpt-oss-20b
    num_experts: 32
    top_k: 4
    num_hidden_layers: 24        # optional: all the model's layers, dense ones included
    num_devices: 4
    num_nodes: 2                 # optional: devices in nodes of num_devices / num_nodes (default 1)
    experts_per_device: 8
    solver: greedy-capped
    options: {load_tolerance: 0.1, load_resamples: 16, seed: 0, time_limit: 10.0}
    calibration: {fingerprint: 'sha256:...', tokens: 105005, documents: 352}
    validation: {...}            # optional: held-out figures (see moeplace.validators.report)
    layers:
    - layer: 0                   # the model's layer index of this MoE layer
      expert_to_device: [2, 0, 3, ...]     # device of logical expert e, N entries
      calibration_load: [1203, 88, ...]    # activations of expert e in the calibration trace
      solver_report: {...}       # what the solver said (cap, objective, CP-SAT status and bound)
      physical_to_logical: [...] # only with redundant_slots R > 0: expert in each of the N + R slots,
                                 # slot p on device p // ((N + R) / D); expert_to_device is then
                                 # the device of each expert's first slot

The calibration load lets ``moeplace validate`` refit the frequency baseline on any held-out trace.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from moeplace.atomic import write_text
from moeplace.calibrate.safe_io import read_text
from moeplace.calibrate.trace import MAX_EXPERTS, MAX_LAYERS
from moeplace.errors import MoeplaceError, file_error
from moeplace.planner.slots import repeated_copy
from moeplace.planner.topology import Topology

FORMAT = "moeplace-placement"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class LayerPlacement:
    """One MoE layer: ``expert_to_device`` int64 ``[N]``, ``calibration_load`` int64 ``[N]``, and
    with replicas ``physical_to_logical`` int64 ``[N + R]`` (else None)."""

    layer_id: int
    expert_to_device: np.ndarray
    calibration_load: np.ndarray
    solver_report: dict[str, Any] = dataclasses.field(default_factory=dict)
    physical_to_logical: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Placement:
    """An expert -> device map for every MoE layer of a model, with its provenance."""

    model: str
    num_experts: int
    top_k: int
    num_devices: int
    solver: str
    options: dict[str, Any]
    calibration: dict[str, Any]
    layers: tuple[LayerPlacement, ...]
    validation: dict[str, Any] | None = None
    num_hidden_layers: int | None = None
    num_nodes: int = 1
    redundant_slots: int = 0

    def __post_init__(self):
        verify_placement(self)

    @property
    def topology(self) -> Topology:
        return Topology(self.num_experts, self.num_devices, self.num_nodes, self.redundant_slots)

    @property
    def groups_on_nodes(self) -> int:
        """The routing groups the placement keeps whole on nodes (its ``group_mode`` nodes), else 1."""
        return self.options.get("routing_groups", 1) if self.options.get("group_mode") == "nodes" else 1

    @property
    def layer_ids(self) -> tuple[int, ...]:
        return tuple(layer.layer_id for layer in self.layers)

    @property
    def expert_to_device(self) -> np.ndarray:
        """int64 ``[L, N]``."""
        return np.stack([layer.expert_to_device for layer in self.layers])

    @property
    def calibration_load(self) -> np.ndarray:
        """int64 ``[L, N]``."""
        return np.stack([layer.calibration_load for layer in self.layers])

    @property
    def physical_to_logical(self) -> np.ndarray:
        """int64 ``[L, P]``: the logical expert in physical slot p, which lives on device
        ``p // slots_per_device``; without replicas, a device's experts in ascending id order."""
        if self.redundant_slots:
            return np.stack([layer.physical_to_logical for layer in self.layers])
        return np.argsort(self.expert_to_device, axis=1, kind="stable")


def verify_placement(placement: Placement) -> None:
    """Raise ``MoeplaceError`` unless every expert of every layer sits on one device and slots match."""
    if not 1 <= placement.num_experts <= MAX_EXPERTS or not 1 <= placement.top_k <= placement.num_experts:
        raise MoeplaceError(
            f"num_experts {placement.num_experts}, top_k {placement.top_k}: need 1 <= top_k <= num_experts "
            f"<= {MAX_EXPERTS}"
        )
    topology = placement.topology
    if not placement.layers:
        raise MoeplaceError("placement has no layers")
    ids = placement.layer_ids
    if len(set(ids)) != len(ids):
        raise MoeplaceError(f"layer indices repeat: {list(ids)}")
    if not all(0 <= layer < MAX_LAYERS for layer in ids):
        raise MoeplaceError(f"layer indices must be the model's, in 0..{MAX_LAYERS - 1}")
    hidden = placement.num_hidden_layers
    if hidden is not None and not max(ids) < hidden <= MAX_LAYERS:
        raise MoeplaceError(f"num_hidden_layers is {hidden}, but layer {max(ids)} is an MoE layer")
    n, slots = topology.num_experts, topology.slots_per_device
    for layer in placement.layers:
        where = f"layer {layer.layer_id}"
        e2d, load = layer.expert_to_device, layer.calibration_load
        if e2d.shape != (n,):
            raise MoeplaceError(f"{where}: expert_to_device has {e2d.shape[0]} entries, need {n}")
        if e2d.min() < 0 or e2d.max() >= placement.num_devices:
            raise MoeplaceError(f"{where}: a device outside 0..{placement.num_devices - 1}")
        if load.shape != (n,) or load.min() < 0:
            raise MoeplaceError(f"{where}: calibration_load needs {n} non-negative counts")
        if placement.redundant_slots:
            _verify_slots(layer, topology)
            continue
        counts = np.bincount(e2d, minlength=placement.num_devices)
        if np.any(counts != slots):
            device = int(np.argmax(counts != slots))
            raise MoeplaceError(f"{where}: device {device} holds {counts[device]} experts, need {slots}")


def _verify_slots(layer: LayerPlacement, topology: Topology) -> None:
    """With replicas: every expert in some slot, no device with two copies of one expert (engines
    cannot serve that: ``moeplace.planner.slots``), expert_to_device = the device of its first slot."""
    where, slots = f"layer {layer.layer_id}", layer.physical_to_logical
    n = topology.num_experts
    if slots is None or slots.shape != (topology.num_physical,):
        raise MoeplaceError(f"{where}: physical_to_logical needs {topology.num_physical} entries")
    if slots.min() < 0 or slots.max() >= n:
        raise MoeplaceError(f"{where}: physical_to_logical holds ids outside 0..{n - 1}")
    missing = np.setdiff1d(np.arange(n), slots)
    if missing.size:
        raise MoeplaceError(f"{where}: expert {missing[0]} has no slot")
    repeat = repeated_copy(slots, topology.slots_per_device)
    if repeat is not None:
        device, expert, copies = repeat
        raise MoeplaceError(
            f"{where}: device {device} holds {copies} copies of expert {expert}; engines keep one copy "
            "of an expert per device"
        )
    device = np.arange(slots.shape[0]) // topology.slots_per_device
    first = np.full(n, -1)
    first[slots[::-1]] = device[::-1]
    if np.any(first != layer.expert_to_device):
        raise MoeplaceError(f"{where}: expert_to_device is not the device of each expert's first slot")


def save_placement(placement: Placement, path: str | Path) -> None:
    """Write the placement YAML atomically. Same placement, same bytes."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": placement.model,
        "num_experts": placement.num_experts,
        "top_k": placement.top_k,
        **({} if placement.num_hidden_layers is None else {"num_hidden_layers": placement.num_hidden_layers}),
        "num_devices": placement.num_devices,
        **({} if placement.num_nodes == 1 else {"num_nodes": placement.num_nodes}),
        **({"redundant_slots": placement.redundant_slots} if placement.redundant_slots else {}),
        "experts_per_device": placement.topology.slots_per_device,
        "solver": placement.solver,
        "options": placement.options,
        "calibration": placement.calibration,
    }
    if placement.validation is not None:
        doc["validation"] = placement.validation
    doc["layers"] = [
        {
            "layer": layer.layer_id,
            "expert_to_device": _Flow(layer.expert_to_device.tolist()),
            "calibration_load": _Flow(layer.calibration_load.tolist()),
            "solver_report": layer.solver_report,
        }
        | (
            {"physical_to_logical": _Flow(layer.physical_to_logical.tolist())}
            if layer.physical_to_logical is not None
            else {}
        )
        for layer in placement.layers
    ]
    write_text(path, yaml.dump(yaml_safe(doc), Dumper=_Dumper, sort_keys=False, width=100))


def load_placement(path: str | Path) -> Placement:
    """Load and verify a placement YAML (``yaml.safe_load``: no object construction)."""
    path = Path(path)
    text = read_text(path)
    try:
        doc = yaml.safe_load(text)
        return _from_doc(doc)
    except yaml.YAMLError as exc:
        raise file_error(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise file_error(path, "nests too deeply to be a placement file") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise file_error(path, f"not valid YAML ({exc})") from None
    except MoeplaceError as exc:
        raise file_error(path, exc) from None


def _from_doc(doc: Any) -> Placement:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MoeplaceError(f"not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise MoeplaceError(f"placement schema version {doc.get('version')!r}; this moeplace reads {VERSION}")
    fields = {
        "model": str,
        "num_experts": int,
        "top_k": int,
        "num_devices": int,
        "solver": str,
        "options": dict,
        "calibration": dict,
        "layers": list,
    }
    for name, kind in fields.items():
        if not isinstance(doc.get(name), kind) or isinstance(doc.get(name), bool):
            raise MoeplaceError(f"field {name!r} missing or not a {kind.__name__}")
    if doc.get("validation") is not None and not isinstance(doc["validation"], dict):
        raise MoeplaceError("field 'validation' is not a mapping")
    hidden = doc.get("num_hidden_layers")
    if hidden is not None and (not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1):
        raise MoeplaceError(f"num_hidden_layers must be a positive integer, got {hidden!r}")
    nodes, redundant = doc.get("num_nodes", 1), doc.get("redundant_slots", 0)
    for name, value in (("num_nodes", nodes), ("redundant_slots", redundant)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise MoeplaceError(f"{name} must be an integer, got {value!r}")
    layers = []
    for i, entry in enumerate(doc["layers"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("layer"), int):
            raise MoeplaceError(f"layers[{i}] needs an integer 'layer'")
        if not isinstance(entry.get("solver_report") or {}, dict):
            raise MoeplaceError(f"layers[{i}]: solver_report is not a mapping")
        layers.append(
            LayerPlacement(
                layer_id=entry["layer"],
                expert_to_device=_int_array(
                    entry.get("expert_to_device"), f"layer {entry['layer']}: expert_to_device"
                ),
                calibration_load=_int_array(
                    entry.get("calibration_load"), f"layer {entry['layer']}: calibration_load"
                ),
                solver_report=entry.get("solver_report") or {},
                physical_to_logical=(
                    _int_array(
                        entry.get("physical_to_logical"), f"layer {entry['layer']}: physical_to_logical"
                    )
                    if redundant
                    else None
                ),
            )
        )
    return Placement(
        **{name: doc[name] for name in fields if name != "layers"},
        layers=tuple(layers),
        validation=doc.get("validation"),
        num_hidden_layers=hidden,
        num_nodes=nodes,
        redundant_slots=redundant,
    )


def _int_array(values: Any, what: str) -> np.ndarray:
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 for v in values
    ):
        raise MoeplaceError(f"{what} must be a list of integers (64-bit)")
    return np.array(values, dtype=np.int64)


def yaml_safe(obj: Any) -> Any:
    """Plain Python types for YAML/JSON: NumPy scalars unwrapped, floats rounded to 6 digits."""
    if isinstance(obj, dict):
        return {str(k): yaml_safe(v) for k, v in obj.items()}
    if isinstance(obj, _Flow):
        return _Flow(yaml_safe(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [yaml_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), 6)
    return obj


class _Flow(list):
    """A list written on one line: ``[0, 1, 2]``."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))

"""Where experts can go: D devices with an equal number of expert slots each, in M nodes."""

from __future__ import annotations

import dataclasses

import numpy as np

from moeplace.errors import MoeplaceError


@dataclasses.dataclass(frozen=True)
class Topology:
    """``num_devices`` devices sharing ``num_experts`` experts, ``slots_per_device`` on each.

    The devices sit in ``num_nodes`` nodes of ``num_devices / num_nodes`` each, numbered node-major
    (device d on node ``d // devices_per_node``), as ranks are in expert-parallel launchers.
    ``redundant_slots`` R extra slots hold replicas of hot experts: ``(N + R) / D`` slots a device
    (D need not divide N then: DeepSeek's decode runs 256 experts + 32 replicas on 144 GPUs).
    """

    num_experts: int
    num_devices: int
    num_nodes: int = 1
    redundant_slots: int = 0

    def __post_init__(self):
        n, d = self.num_experts, self.num_devices
        if d < 1:
            raise MoeplaceError(f"{{=num_devices}} must be at least 1, got {d}")
        if d > n:
            raise MoeplaceError(f"{{=num_devices}} {d} exceeds the {n} experts: a device would hold none")
        if n % d and not self.redundant_slots:
            raise MoeplaceError(
                f"{{=num_devices}} {d} does not divide the {n} experts into equal slots per device"
            )
        if self.num_nodes < 1 or d % self.num_nodes:
            raise MoeplaceError(
                f"{{=num_nodes}} {self.num_nodes} must be at least 1 and divide the {d} devices"
            )
        if self.redundant_slots < 0 or (n + self.redundant_slots) % d:
            raise MoeplaceError(
                f"{{=redundant_slots}} {self.redundant_slots} must be >= 0 and fill the {d} devices evenly: "
                f"{n} experts + {self.redundant_slots} slots do not split into equal slots per device"
            )
        if self.slots_per_device > n:
            raise MoeplaceError(
                f"{{=redundant_slots}} {self.redundant_slots} gives each device {self.slots_per_device} "
                f"slots for {n} experts: a device would hold two copies of one expert"
            )

    @property
    def num_physical(self) -> int:
        """Physical expert slots P = N + R."""
        return self.num_experts + self.redundant_slots

    @property
    def slots_per_device(self) -> int:
        return self.num_physical // self.num_devices

    @property
    def one_copy_fits(self) -> bool:
        """Whether one copy of each expert fills the devices evenly (D divides N). When not (256
        experts at EP144 with 32 redundant slots), only a placement with replicas fills the slots."""
        return self.num_experts % self.num_devices == 0

    @property
    def without_replicas(self) -> Topology:
        if not self.one_copy_fits:
            raise MoeplaceError(
                f"{self.num_devices} devices do not divide the {self.num_experts} experts: only a placement "
                f"with its {self.redundant_slots} replicas fills them evenly"
            )
        return Topology(self.num_experts, self.num_devices, self.num_nodes)

    @property
    def devices_per_node(self) -> int:
        return self.num_devices // self.num_nodes

    @property
    def node_of_device(self) -> np.ndarray:
        """int64 ``[D]``: the node of each device."""
        return np.arange(self.num_devices) // self.devices_per_node

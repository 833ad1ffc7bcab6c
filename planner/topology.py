"""Where experts can go: D devices with an equal number of expert slots each."""

from __future__ import annotations

import dataclasses

from moeplace.errors import MoeplaceError


@dataclasses.dataclass(frozen=True)
class Topology:
    """``num_devices`` devices sharing ``num_experts`` experts, ``slots_per_device`` on each."""

    num_experts: int
    num_devices: int

    def __post_init__(self):
        n, d = self.num_experts, self.num_devices
        if d < 1:
            raise MoeplaceError(f"--devices must be at least 1, got {d}")
        if d > n:
            raise MoeplaceError(f"--devices {d} exceeds the {n} experts: a device would hold none")
        if n % d:
            raise MoeplaceError(f"--devices {d} does not divide the {n} experts into equal slots per device")

    @property
    def slots_per_device(self) -> int:
        return self.num_experts // self.num_devices

"""Time from counts: a hardware profile turns a step's straggler traffic and compute into seconds.

A model, and labelled as one wherever it is printed: a layer's dispatch lasts as long as the rank
that moves the most bytes (the larger of what it sends and receives, over NVLink and RDMA at the
profile's bandwidths), its expert compute as long as the busiest rank's GEMMs, which take the longer
of their arithmetic (6 x hidden x expert-intermediate FLOPs a token-expert pair, at the profile's
throughput) and reading the weights of every expert they touch (FP8, at the profile's memory
bandwidth: what bounds decode), and its combine like its dispatch with the combine's bytes. Without
overlap a layer costs the sum; with two-micro-batch overlap (one micro-batch's dispatch and combine
run while the other's experts compute) the larger of its communication and its compute.

Built-in profile ``h800`` (every figure from a public source, cited beside it): DeepEP's measured
bandwidths on H800 with CX7 400 Gb/s InfiniBand (README, normal and low-latency tables) and the
H800's dense tensor throughput. ``--profile FILE`` takes a YAML of the same fields with measured
numbers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import yaml

from moeplace.calibrate.safe_io import read_text
from moeplace.errors import MoeplaceError, file_error
from moeplace.validators.step import StepCost


@dataclasses.dataclass(frozen=True)
class Profile:
    """Link bandwidths per rank in GB/s by kernel, and expert compute throughput.

    ``nvlink`` / ``rdma``: ``{kernel: (dispatch GB/s, combine GB/s)}``; ``tflops``: dense tensor
    throughput of the expert GEMMs (dispatch in FP8, so FP8 throughput); ``hbm_tbps``: memory
    bandwidth the expert weights are read at; ``efficiency``: the fraction of both the grouped
    expert GEMMs reach; ``source``: where each number comes from."""

    name: str
    nvlink: dict[str, tuple[float, float]]
    rdma: dict[str, tuple[float, float]]
    tflops: float
    hbm_tbps: float
    efficiency: float
    source: str

    def assumptions(self) -> str:
        return (
            f"profile {self.name} (a model, not a measurement): {self.source}; expert GEMMs at "
            f"{self.efficiency:.0%} of {self.tflops:g} TFLOPS and of {self.hbm_tbps:g} TB/s for FP8 weights; "
            "each phase of a layer waits for its busiest rank"
        )


H800 = Profile(
    name="h800",
    # deepseek-ai/DeepEP README: normal kernels intranode EP8 153 / 158 GB/s (NVLink), internode EP16
    # 43 / 43 GB/s (RDMA); low-latency EP8 98 / 127 GB/s (NVLink within a node since 2025-06),
    # EP16 63 / 74 GB/s (RDMA). "rank" and "node" rules are the normal kernels, "expert" low-latency.
    nvlink={"rank": (153.0, 158.0), "node": (153.0, 158.0), "expert": (98.0, 127.0)},
    rdma={"rank": (43.0, 43.0), "node": (43.0, 43.0), "expert": (63.0, 74.0)},
    tflops=1979.0,  # NVIDIA H800 SXM5 datasheet: FP8 tensor core, dense
    hbm_tbps=3.35,  # NVIDIA H800 SXM5 datasheet: HBM3
    efficiency=0.4,
    source="DeepEP README bandwidths (H800, CX7 400 Gb/s IB), NVIDIA H800 SXM datasheet (FP8, HBM3)",
)
PROFILES = {"h800": H800}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What a pair and a message weigh: ``hidden`` size and ``intermediate`` size of one expert."""

    hidden: int
    intermediate: int

    def message_bytes(self, kernel: str) -> tuple[float, float]:
        """Bytes a token's hidden state takes to dispatch (FP8 with one fp32 scale per 128) and to
        combine (BF16); the low-latency kernel adds a 16-byte header per message."""
        header = 16 if kernel == "expert" else 0
        return self.hidden * (1 + 4 / 128) + header, 2 * self.hidden + header

    @property
    def pair_flops(self) -> float:
        """Gate, up and down projections of one expert for one token."""
        return 6.0 * self.hidden * self.intermediate

    @property
    def expert_bytes(self) -> float:
        """The weights of one expert's three projections in FP8."""
        return 3.0 * self.hidden * self.intermediate


# Published configs (config.json on the Hugging Face hub) of the models the shared traces come from
SHAPES = {
    "openai/gpt-oss-20b": ModelShape(hidden=2880, intermediate=2880),
    "deepseek-ai/ESFT-vanilla-lite": ModelShape(hidden=2048, intermediate=1408),
    "deepseek-ai/DeepSeek-V2-Lite": ModelShape(hidden=2048, intermediate=1408),
    "deepseek-ai/DeepSeek-V3": ModelShape(hidden=7168, intermediate=2048),
}


def shape_of(model: str) -> ModelShape:
    """The shape of a known model (its name may carry a note, as the shared traces' do)."""
    for name, shape in SHAPES.items():
        if model.startswith(name):
            return shape
    raise MoeplaceError(
        f"no hidden and expert sizes known for {model!r}: give {{=hidden}} and {{=intermediate}} "
        "(the model's hidden size and one expert's intermediate size)"
    )


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a YAML file with the same fields."""
    if name_or_path in PROFILES:
        return PROFILES[name_or_path]
    path = Path(name_or_path)
    doc = yaml.safe_load(read_text(path))
    try:
        return Profile(
            name=str(doc.get("name", path.stem)),
            nvlink={k: (float(v[0]), float(v[1])) for k, v in doc["nvlink"].items()},
            rdma={k: (float(v[0]), float(v[1])) for k, v in doc["rdma"].items()},
            tflops=float(doc["tflops"]),
            hbm_tbps=float(doc["hbm_tbps"]),
            efficiency=float(doc["efficiency"]),
            source=str(doc.get("source", path.name)),
        )
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise file_error(
            path, f"not a profile: needs nvlink, rdma, tflops, hbm_tbps, efficiency ({exc})"
        ) from None


@dataclasses.dataclass(frozen=True)
class StepTime:
    """Estimated seconds per step, summed over MoE layers: each phase waits for its busiest rank."""

    dispatch: float
    compute: float
    combine: float
    overlapped: float  # with two-micro-batch overlap: per layer the larger of communication and compute

    @property
    def communication(self) -> float:
        return self.dispatch + self.combine

    def total(self, overlap: bool) -> float:
        """A step: phases in a row, or with two-micro-batch overlap, layer by layer, the larger of
        communication and compute."""
        return self.overlapped if overlap else self.communication + self.compute


def step_time(cost: StepCost, shape: ModelShape, profile: Profile, kernel: str) -> StepTime:
    """Seconds per step of ``cost`` (per-layer busiest-rank counts), for a model ``shape``."""
    dispatch_bytes, combine_bytes = shape.message_bytes(kernel)
    nvlink, rdma = profile.nvlink[kernel], profile.rdma[kernel]

    def moving(size: float, phase: int) -> np.ndarray:
        """[L] seconds: the busier of sending and receiving, NVLink and RDMA in a row."""
        by_link = [
            np.maximum(cost.straggler[f"sent_{link}"], cost.straggler[f"received_{link}"])
            * size
            / (bw[phase] * 1e9)
            for link, bw in (("nvlink", nvlink), ("rdma", rdma))
        ]
        return by_link[0] + by_link[1]

    arithmetic = cost.straggler["pairs"] * shape.pair_flops / (profile.tflops * 1e12 * profile.efficiency)
    weights = cost.straggler["experts"] * shape.expert_bytes / (profile.hbm_tbps * 1e12 * profile.efficiency)
    compute = np.maximum(arithmetic, weights)
    dispatch, combine = moving(dispatch_bytes, 0), moving(combine_bytes, 1)
    return StepTime(
        dispatch=float(dispatch.sum()),
        compute=float(compute.sum()),
        combine=float(combine.sum()),
        overlapped=float(np.maximum(dispatch + combine, compute).sum()),
    )

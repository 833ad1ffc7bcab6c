"""A hardware profile measured on this machine: what ``--profile FILE`` takes, from timings.

Every figure is timed on all ranks at once, as a serving step runs them, and each sample is the
slowest rank's (a phase of a step waits for its busiest rank):

- expert GEMMs: for each tokens-per-expert value t, a pass over E experts that gathers each
  expert's t rows, runs its gate, up and down projections (``[t, hidden] x [hidden, intermediate]``
  twice, ``[t, intermediate] x [intermediate, hidden]``) and adds the result back, exactly the code
  ``moeplace bench`` runs; achieved TFLOPS = 6 x hidden x intermediate x t x E / seconds. The
  passes take their experts in turn from a pool of weights larger than the caches, as a serving
  step reads every layer's weights afresh.
- weight reads: one token per expert over the whole pool: bytes of weights / seconds (TB/s), what
  bounds a pass of few tokens (decode); per-expert launch costs are in it, as the bench pays them.
- all-to-all: ``torch.distributed.all_to_all_single`` at several message sizes, fitted as
  seconds = latency + bytes a rank sends to the others / bandwidth (GB/s per rank); the latency of
  a layer's collectives (sizes, dispatch, combine) is ``layer_overhead_us``.

Torch is imported inside the functions that need it (the ``calibrate`` extra); the functions take
a ``torch.distributed`` process group already initialized (``moeplace profile`` runs under torchrun).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml

from moeplace.atomic import write_text
from moeplace.calibrate.safe_io import read_text
from moeplace.errors import MoeplaceError, file_error
from moeplace.planner.placement import yaml_safe
from moeplace.validators.step import KERNELS

COLLECTIVES_PER_LAYER = 3  # all-to-alls a bench layer runs: split sizes, dispatch, combine
DEFAULT_TOKENS = (1, 4, 16, 64, 256, 1024)


@dataclasses.dataclass(frozen=True)
class MeasureSetting:
    """What to measure: expert sizes, the GEMM curve's tokens per expert, the fewest experts a
    GEMM pass runs, bytes of the pool of expert weights a rank (more than its caches), FLOPs a
    GEMM pass does at least (as the pool allows), the all-to-all's bytes to each peer, and timed
    samples per point (the median is kept)."""

    hidden: int
    intermediate: int
    tokens: tuple[int, ...] = DEFAULT_TOKENS
    experts: int = 8
    weight_bytes: int = 256 << 20
    pass_flops: float = 2.0**30
    message_bytes: tuple[int, ...] = (1 << 10, 16 << 10, 128 << 10, 1 << 20)
    repeats: int = 7

    def __post_init__(self):
        if self.hidden < 1 or self.intermediate < 1 or self.experts < 1 or self.repeats < 1:
            raise MoeplaceError("hidden, intermediate, experts and repeats must be at least 1")
        if not self.tokens or min(self.tokens) < 1 or not self.message_bytes or min(self.message_bytes) < 1:
            raise MoeplaceError("the tokens per expert and the message sizes must be at least 1")


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    """Measured figures of one machine (per rank), and how they were measured.

    ``gemm``: (tokens per expert, achieved TFLOPS) per point; ``weight_read_tbps``: TB/s of expert
    weights read by one-token passes; ``all_to_all``: (bytes to each peer, median seconds) per
    point; ``all_to_all_gbps`` and ``all_to_all_latency_us``: the fit of those points, per rank.
    """

    name: str
    device: str
    backend: str
    ranks: int
    threads: int
    dtype: str
    hidden: int
    intermediate: int
    gemm: tuple[tuple[int, float], ...]
    weight_read_tbps: float
    all_to_all: tuple[tuple[int, float], ...]
    all_to_all_gbps: float
    all_to_all_latency_us: float
    seconds: float
    torch_version: str

    @property
    def tflops(self) -> float:
        """The best point of the GEMM curve."""
        return max(tflops for _, tflops in self.gemm)

    @property
    def layer_overhead_us(self) -> float:
        """Fixed latency of one MoE layer's collectives (``COLLECTIVES_PER_LAYER`` all-to-alls)."""
        return COLLECTIVES_PER_LAYER * self.all_to_all_latency_us

    def document(self) -> dict:
        """The profile YAML: the fields ``load_profile`` reads, the measured curve, and the setting."""
        bandwidth = [round(self.all_to_all_gbps, 4)] * 2
        setting = (
            f"{self.device}, {self.ranks} ranks ({self.backend}, {self.threads} thread(s) each), "
            f"{self.dtype}, hidden {self.hidden}, intermediate {self.intermediate}"
        )
        return {
            "name": self.name,
            "source": f"measured by moeplace profile: {setting}, torch {self.torch_version}",
            "nvlink": {kernel: bandwidth for kernel in KERNELS},  # one bandwidth for every sending rule
            "rdma": {kernel: bandwidth for kernel in KERNELS},
            "tflops": round(self.tflops, 6),
            "hbm_tbps": round(self.weight_read_tbps, 6),
            "efficiency": 1.0,
            "gemm": [[tokens, round(tflops, 6)] for tokens, tflops in self.gemm],
            "layer_overhead_us": round(self.layer_overhead_us, 2),
            "sources": {
                "nvlink": f"all_to_all_single between {self.ranks} ranks of one node ({self.backend}): "
                "bandwidth per rank fitted over message sizes, dispatch and combine alike",
                "rdma": "not measured (one node): the one-node all-to-all bandwidth",
                "tflops": "best point of the gemm curve",
                "gemm": "expert passes (gather, gate/up/down projections, scatter-add) at each tokens "
                f"per expert, {self.dtype}, slowest rank; 6 x hidden x intermediate FLOPs a pair",
                "hbm_tbps": f"one-token expert passes over {self.dtype} weights larger than the caches",
                "layer_overhead_us": f"{COLLECTIVES_PER_LAYER} x the fitted all-to-all latency "
                f"({self.all_to_all_latency_us:.1f} us): split sizes, dispatch, combine",
                "efficiency": "1.0: the measured figures are achieved, not peak",
            },
            "measured": {
                "device": self.device,
                "backend": self.backend,
                "ranks": self.ranks,
                "threads": self.threads,
                "dtype": self.dtype,
                "hidden": self.hidden,
                "intermediate": self.intermediate,
                "all_to_all_us": [[size, round(seconds * 1e6, 2)] for size, seconds in self.all_to_all],
                "seconds": round(self.seconds, 2),
            },
        }


def write_profile(profile: HardwareProfile, path: Path) -> None:
    """Write ``profile.document()`` as YAML to ``path`` (atomically)."""
    write_text(
        path,
        yaml.safe_dump(yaml_safe(profile.document()), sort_keys=False, default_flow_style=False, width=100),
    )


def measured_setting(path: Path) -> dict:
    """The ``measured`` block of a profile YAML (``{}`` for a profile not written by
    ``moeplace profile``); the profile's own figures are ``load_profile``'s."""
    doc = yaml.safe_load(read_text(path))
    if not isinstance(doc, dict):
        raise file_error(path, "not a profile: a YAML mapping is expected")
    return doc["measured"] if isinstance(doc.get("measured"), dict) else {}


def timer(device) -> Callable[[], float]:
    """A clock that first waits for ``device``'s queued work (CUDA), in seconds."""
    import torch

    if device.type == "cuda":

        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return now
    return time.perf_counter


def slowest(samples: Sequence[float], device) -> np.ndarray:
    """float ``[n]``: each sample's maximum over ranks (one all-reduce for all of them)."""
    import torch
    import torch.distributed as dist

    values = torch.tensor(list(samples), dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values.cpu().numpy()


def expert_weights(experts: int, hidden: int, intermediate: int, dtype, device, seed: int = 0) -> list:
    """Random weights of ``experts`` experts: per expert (gate ``[h, i]``, up ``[h, i]``, down
    ``[i, h]``), scaled so activations stay of order one."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def matrix(rows: int, cols: int):
        values = torch.randn(rows, cols, generator=generator) / rows**0.5
        return values.to(dtype=dtype, device=device)

    return [
        (matrix(hidden, intermediate), matrix(hidden, intermediate), matrix(intermediate, hidden))
        for _ in range(experts)
    ]


def run_experts(x, rows, pair_weight, offsets: Sequence[int], weights: Sequence, out) -> None:
    """Add every expert's output into ``out`` ``[n, h]``: expert j takes the rows
    ``rows[offsets[j]:offsets[j + 1]]`` (int64 ``[pairs]``) of ``x`` ``[n, h]``, runs
    ``(silu(x W_gate) * (x W_up)) W_down`` with ``weights[j]`` (at least one a slot of ``offsets``)
    and adds it, times ``pair_weight`` (``[pairs, 1]``, the router's weight), to those rows of
    ``out``. A loop over experts, each a
    batch of its tokens (what a grouped GEMM runs)."""
    import torch

    for j in range(len(offsets) - 1):
        lo, hi = offsets[j], offsets[j + 1]
        if hi == lo:
            continue
        gate, up, down = weights[j]
        index = rows[lo:hi]
        tokens = x.index_select(0, index)
        hidden = torch.nn.functional.silu(tokens @ gate) * (tokens @ up)
        out.index_add_(0, index, (hidden @ down) * pair_weight[lo:hi])


def measure_compute(
    setting: MeasureSetting, dtype, device, on_point: Callable[[], None] = lambda: None
) -> tuple[list[tuple[int, float]], float]:
    """The GEMM curve, (tokens per expert, achieved TFLOPS) for each of ``setting.tokens``, and the
    weight-read bandwidth in TB/s; ``on_point`` after each point and after the weight read.

    Both run over a pool of ``setting.weight_bytes`` of expert weights a rank, more than the
    caches hold, each pass taking the pool's next experts (as a serving step reads each layer's
    weights afresh): at least ``setting.experts`` and enough for about ``setting.pass_flops``. The
    weight read is a pass of one token over every expert of the pool. Each figure is the median
    over ``setting.repeats`` passes, each pass the slowest rank's."""
    import torch

    h, i = setting.hidden, setting.intermediate
    per_expert = 3 * h * i * torch.empty((), dtype=dtype).element_size()
    pool = expert_weights(max(setting.experts, setting.weight_bytes // per_expert), h, i, dtype, device)
    now, curve, cursor = timer(device), [], 0

    def seconds_of_passes(tokens: int, experts: int, passes: int) -> float:
        """Median seconds of ``passes`` passes of ``tokens`` tokens over ``experts`` experts."""
        nonlocal cursor
        rows = torch.arange(tokens * experts, device=device)
        x = torch.randn(tokens * experts, h).to(dtype=dtype, device=device)
        out = torch.zeros_like(x)
        pair_weight = torch.ones(tokens * experts, 1, dtype=dtype, device=device)
        offsets = [j * tokens for j in range(experts + 1)]
        seconds = []
        for _ in range(passes + 1):  # the first: warm-up
            weights = [pool[(cursor + j) % len(pool)] for j in range(experts)]
            cursor = (cursor + experts) % len(pool)
            barrier(device)
            start = now()
            run_experts(x, rows, pair_weight, offsets, weights, out)
            seconds.append(now() - start)
        return float(np.median(slowest(seconds[1:], device)))

    for tokens in setting.tokens:
        flops = 6.0 * h * i * tokens  # one expert's pass
        experts = min(len(pool), max(setting.experts, int(np.ceil(setting.pass_flops / flops))))
        curve.append((tokens, flops * experts / seconds_of_passes(tokens, experts, setting.repeats) / 1e12))
        on_point()
    read = len(pool) * per_expert / seconds_of_passes(1, len(pool), max(3, setting.repeats // 2)) / 1e12
    on_point()
    return curve, read


def measure_all_to_all(
    setting: MeasureSetting, device, on_point: Callable[[], None] = lambda: None
) -> list[tuple[int, float]]:
    """(bytes to each peer, median seconds) of ``all_to_all_single`` for each of
    ``setting.message_bytes``: every rank sends that many bytes to every rank (itself included),
    after a barrier, the slowest rank's time."""
    import torch
    import torch.distributed as dist

    ranks, now, points = dist.get_world_size(), timer(device), []
    for size in setting.message_bytes:
        send = torch.zeros(size * ranks, dtype=torch.uint8, device=device)
        receive = torch.empty_like(send)
        dist.all_to_all_single(receive, send)  # warm-up: connections, buffers
        seconds = []
        for _ in range(setting.repeats * 2):
            barrier(device)
            start = now()
            dist.all_to_all_single(receive, send)
            seconds.append(now() - start)
        points.append((size, float(np.median(slowest(seconds, device)))))
        on_point()
    return points


def fit_all_to_all(points: Sequence[tuple[int, float]], ranks: int) -> tuple[float, float]:
    """(GB/s per rank, latency in us) of seconds = latency + bytes sent to the other ranks / bandwidth,
    a least-squares line through ``points`` (bytes to each peer, seconds). When the points do not
    rise with size (noise), the bandwidth of the largest message and no latency."""
    sizes = np.array([size for size, _ in points], dtype=np.float64) * (ranks - 1)
    seconds = np.array([s for _, s in points], dtype=np.float64)
    if sizes.shape[0] >= 2:
        slope, intercept = np.polyfit(sizes, seconds, 1)
        if slope > 0:
            return 1.0 / slope / 1e9, max(float(intercept), 0.0) * 1e6
    return float(sizes[-1] / seconds[-1] / 1e9), 0.0


def barrier(device) -> None:
    """Every rank here, and (CUDA) its queued work done."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def measure_profile(
    setting: MeasureSetting, name: str, device, dtype, on_point: Callable[[], None] = lambda: None
) -> HardwareProfile:
    """Measure every figure (``on_point`` after each GEMM point, the weight read and each
    all-to-all point: ``measure_points(setting)`` calls in all) on the process group's ranks."""
    import torch
    import torch.distributed as dist

    start = time.perf_counter()
    gemm, weight_read = measure_compute(setting, dtype, device, on_point)
    points = measure_all_to_all(setting, device, on_point)
    bandwidth, latency = fit_all_to_all(points, dist.get_world_size())
    device_text = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return HardwareProfile(
        name=name,
        device=device_text,
        backend=dist.get_backend(),
        ranks=dist.get_world_size(),
        threads=torch.get_num_threads(),
        dtype=str(dtype).removeprefix("torch."),
        hidden=setting.hidden,
        intermediate=setting.intermediate,
        gemm=tuple(gemm),
        weight_read_tbps=weight_read,
        all_to_all=tuple(points),
        all_to_all_gbps=bandwidth,
        all_to_all_latency_us=latency,
        seconds=time.perf_counter() - start,
        torch_version=torch.__version__,
    )


def measure_points(setting: MeasureSetting) -> int:
    """How many times ``measure_profile`` calls ``on_point``."""
    return len(setting.tokens) + 1 + len(setting.message_bytes)


def summary_line(profile: HardwareProfile) -> str:
    """One line of the measured figures."""
    curve = ", ".join(f"{tokens}: {tflops * 1e3:.1f}" for tokens, tflops in profile.gemm)
    return (
        f"expert GEMMs (GFLOPS by tokens per expert) {curve}; weight reads "
        f"{profile.weight_read_tbps * 1e3:.2f} GB/s; all-to-all {profile.all_to_all_gbps:.3f} GB/s a rank, "
        f"latency {profile.all_to_all_latency_us:.0f} us (layer overhead {profile.layer_overhead_us:.0f} us)"
    )

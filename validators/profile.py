"""Time from counts: a hardware profile and a model's sizes turn a step's counts into seconds.

A model, and labelled as one wherever it is printed. A step is a **whole** forward pass of every
rank at once. Per MoE layer, the part a placement changes: a layer's dispatch lasts as long as the
rank that moves the most bytes (the larger of what it sends and receives, over NVLink and RDMA at
the profile's bandwidths), its expert compute as long as the busiest rank's GEMMs, which take the
longer of their arithmetic (6 x hidden x expert-intermediate FLOPs a token-expert pair, at the
profile's throughput) and reading the weights of every expert they touch (FP8, at the profile's
memory bandwidth: what bounds decode), and its combine like its dispatch with the combine's bytes.
Without overlap a layer costs the sum; with two-micro-batch overlap (one micro-batch's dispatch
and combine run while the other's experts compute) the larger of its communication and its compute.

The part no placement changes (``StepTime.rest``), the same on every rank since every rank runs a
full batch: attention (projections, and the attention itself over each token's context), the
shared experts, the gate, the dense layers, the output head for the tokens that produce logits,
and a fixed overhead per layer (kernel launches, synchronisation), each the longer of its
arithmetic and reading its weights (and, for attention, the KV cache). It sets the scale: every
relative figure is relative to the whole step.

Built-in profiles ``h800``, ``h100``, ``h200``, ``b200``: every figure with its source in
``Profile.sources``; where no source gives one, the value used, why, and that it is assumed.
``--profile FILE`` takes a YAML of the same fields (``moeplace profile`` measures one).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import yaml

from moeplace.calibrate.model_config import moe_layout, read_config
from moeplace.calibrate.safe_io import read_text
from moeplace.errors import MoeplaceError, file_error
from moeplace.validators.step import KERNELS, StepCost


@dataclasses.dataclass(frozen=True)
class Profile:
    """Link bandwidths per rank in GB/s by kernel, compute throughput and memory bandwidth.

    ``nvlink`` / ``rdma``: ``{kernel: (dispatch GB/s, combine GB/s)}``; ``tflops``: dense tensor
    throughput of the GEMMs (FP8); ``hbm_tbps``: memory bandwidth weights are read at;
    ``efficiency``: the fraction of both the GEMMs reach; ``gemm``: optionally a measured curve,
    ``((tokens per expert, achieved TFLOPS), ...)`` ascending, used instead of ``tflops x
    efficiency`` for arithmetic; ``layer_overhead_us``: fixed microseconds per layer and step
    (launches, synchronisation); ``source``: a line on where the numbers come from;
    ``sources``: ``{figure: where it comes from}``."""

    name: str
    nvlink: dict[str, tuple[float, float]]
    rdma: dict[str, tuple[float, float]]
    tflops: float
    hbm_tbps: float
    efficiency: float
    source: str
    layer_overhead_us: float = 0.0
    gemm: tuple[tuple[float, float], ...] = ()
    sources: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        figures = [self.tflops, self.hbm_tbps, self.efficiency, *(v for pair in self.gemm for v in pair)]
        figures += [bw for table in (self.nvlink, self.rdma) for pair in table.values() for bw in pair]
        if not all(math.isfinite(v) and v > 0 for v in figures) or self.efficiency > 1:
            raise MoeplaceError(
                f"profile {self.name}: bandwidths, tflops, hbm_tbps and the gemm curve must be positive "
                "and finite, efficiency in (0, 1]"
            )
        if not (math.isfinite(self.layer_overhead_us) and self.layer_overhead_us >= 0):
            raise MoeplaceError(f"profile {self.name}: layer_overhead_us must be finite and at least 0")
        for table in (self.nvlink, self.rdma):
            if not set(KERNELS) <= set(table):
                raise MoeplaceError(
                    f"profile {self.name}: nvlink and rdma need the kernels rank, node and expert"
                )

    def assumptions(self) -> str:
        compute = (
            f"GEMMs at the measured curve ({len(self.gemm)} points)"
            if self.gemm
            else f"GEMMs at {self.efficiency:.0%} of {self.tflops:g} TFLOPS"
        )
        return (
            f"profile {self.name} (a model, not a measurement): {self.source}; {compute} and "
            f"{self.efficiency:.0%} of {self.hbm_tbps:g} TB/s for FP8 weights, "
            f"{self.layer_overhead_us:g} us a layer overhead; whole steps (attention, shared and dense "
            "layers, gate, head and overhead included); each phase of a MoE layer waits for its busiest rank"
        )

    def seconds(
        self, flops: np.ndarray | float, weight_bytes: np.ndarray | float, tokens_per_gemm
    ) -> np.ndarray:
        """Seconds of GEMMs doing ``flops`` and reading ``weight_bytes``: the longer of the two.
        ``tokens_per_gemm``: the rows each GEMM multiplies (sets the throughput on a measured curve)."""
        arithmetic = np.asarray(flops, float) / (self.throughput(tokens_per_gemm) * 1e12)
        return np.maximum(
            arithmetic, np.asarray(weight_bytes, float) / (self.hbm_tbps * 1e12 * self.efficiency)
        )

    def throughput(self, tokens_per_gemm) -> np.ndarray:
        """Achieved TFLOPS at ``tokens_per_gemm`` rows: the curve, interpolated in log tokens and
        held at its ends, or ``tflops x efficiency``."""
        tokens = np.maximum(np.asarray(tokens_per_gemm, float), 1.0)
        if not self.gemm:
            return np.full_like(tokens, self.tflops * self.efficiency)
        points = np.asarray(self.gemm, float)
        return np.interp(np.log(tokens), np.log(points[:, 0]), points[:, 1])


_DEEPEP_V1 = "DeepEP README V1 tables (docs/legacy.md at HEAD): H800, CX7 400 Gb/s InfiniBand"
_DEEPEP_V2 = "DeepEP README V2 table (8K tokens, hidden 7168, top-8, FP8 dispatch, BF16 combine)"
_HALF_REMOTE = (
    "V2 reports logical bandwidth including local-rank traffic; at EP 8 x 2 about half a token's "
    "destinations are on the other node, so the RDMA figure is half the logical one (derived)"
)
_EFFICIENCY = (
    "assumed: 40% of peak for grouped FP8 GEMMs of serving-size batches (no public source gives the "
    "efficiency at these shapes; measure it with moeplace profile)"
)
_OVERHEAD = (
    "assumed: about 30 us a layer and step of kernel launches and the normal kernels' host "
    "synchronisation on the receive counts (no public source; measure it)"
)
_LOW_LATENCY_NVLINK = (
    "assumed: DeepEP's low-latency kernels are latency-bound; its H800 NVLink figures (98 / 127 GB/s) "
    "are used, no SM90 figure with 900 GB/s NVLink being published"
)


def _sm90(name: str, hbm_tbps: float, hbm_source: str) -> Profile:
    """An H100-class profile (SM90, 900 GB/s NVLink 4, CX7 400 Gb/s)."""
    return Profile(
        name=name,
        nvlink={"rank": (360.0, 360.0), "node": (360.0, 360.0), "expert": (98.0, 127.0)},
        rdma={"rank": (45.0, 40.5), "node": (45.0, 40.5), "expert": (63.0, 74.0)},
        tflops=1979.0,
        hbm_tbps=hbm_tbps,
        efficiency=0.4,
        layer_overhead_us=30.0,
        source=f"NVIDIA {name.upper()} SXM datasheet, DeepEP V2 (SM90) and V1 tables, assumed figures named",
        sources={
            "tflops": f"NVIDIA {name.upper()} SXM datasheet: 1,979 TFLOPS FP8 tensor core, dense",
            "hbm_tbps": hbm_source,
            "nvlink.rank/node": (
                "assumed: 80% of NVLink 4's 450 GB/s a direction (DeepEP publishes no SM90 NVLink figure "
                "for 900 GB/s NVLink; its V2 SM100 kernels reach 81% of NVLink 5, its V1 H800 ones 96%)"
            ),
            "nvlink.expert": _LOW_LATENCY_NVLINK,
            "rdma.rank/node": f"{_DEEPEP_V2}: SM90, CX7, EP 8 x 2, 90 / 81 GB/s logical; {_HALF_REMOTE}",
            "rdma.expert": f"{_DEEPEP_V1}: low-latency EP16 63 / 74 GB/s (same CX7 NIC)",
            "efficiency": _EFFICIENCY,
            "layer_overhead_us": _OVERHEAD,
        },
    )


H800 = Profile(
    name="h800",
    # DeepEP V1: normal kernels intranode EP8 153 / 158 GB/s (NVLink), internode EP16 43 / 43 GB/s
    # (RDMA); low-latency EP8 98 / 127 GB/s (NVLink within a node since 2025-06), EP16 63 / 74 GB/s
    # (RDMA). "rank" and "node" rules are the normal kernels, "expert" low-latency.
    nvlink={"rank": (153.0, 158.0), "node": (153.0, 158.0), "expert": (98.0, 127.0)},
    rdma={"rank": (43.0, 43.0), "node": (43.0, 43.0), "expert": (63.0, 74.0)},
    tflops=1979.0,
    hbm_tbps=3.35,
    efficiency=0.4,
    layer_overhead_us=30.0,
    source="DeepEP README bandwidths (H800, CX7 400 Gb/s IB), NVIDIA H800 SXM datasheet (FP8, HBM3)",
    sources={
        "tflops": "NVIDIA H800 SXM5 datasheet: 1,979 TFLOPS FP8 tensor core, dense",
        "hbm_tbps": "NVIDIA H800 SXM5 datasheet: 3.35 TB/s HBM3",
        "nvlink.rank/node": f"{_DEEPEP_V1}: normal intranode EP8 153 / 158 GB/s",
        "nvlink.expert": f"{_DEEPEP_V1}: low-latency EP8 98 / 127 GB/s",
        "rdma.rank/node": f"{_DEEPEP_V1}: normal internode EP16 43 / 43 GB/s",
        "rdma.expert": f"{_DEEPEP_V1}: low-latency EP16 63 / 74 GB/s",
        "efficiency": _EFFICIENCY,
        "layer_overhead_us": _OVERHEAD,
    },
)
H100 = _sm90("h100", 3.35, "NVIDIA H100 SXM5 datasheet: 3.35 TB/s HBM3")
H200 = _sm90("h200", 4.8, "NVIDIA H200 SXM datasheet: 4.8 TB/s HBM3e")
B200 = Profile(
    name="b200",
    nvlink={"rank": (726.0, 740.0), "node": (726.0, 740.0), "expert": (465.0, 595.0)},
    rdma={"rank": (45.0, 45.5), "node": (45.0, 45.5), "expert": (63.0, 74.0)},
    tflops=4500.0,
    hbm_tbps=8.0,
    efficiency=0.4,
    layer_overhead_us=30.0,
    source="NVIDIA HGX B200 datasheet, DeepEP V2 (SM100) and V1 tables, assumed figures named",
    sources={
        "tflops": "NVIDIA HGX B200 datasheet: 9 PFLOPS FP8 with sparsity a GPU, so 4,500 TFLOPS dense",
        "hbm_tbps": "NVIDIA HGX B200 datasheet: 8 TB/s HBM3e a GPU",
        "nvlink.rank/node": f"{_DEEPEP_V2}: SM100, EP 8, 726 / 740 GB/s NVLink (max performance)",
        "nvlink.expert": (
            "assumed: the V2 SM100 NVLink figures scaled by V1's low-latency-to-normal ratio on H800 "
            "(98 / 153 and 127 / 158); DeepEP publishes no SM100 low-latency table"
        ),
        "rdma.rank/node": f"{_DEEPEP_V2}: SM100, CX7, EP 8 x 2, 90 / 91 GB/s logical; {_HALF_REMOTE}",
        "rdma.expert": f"assumed: {_DEEPEP_V1} low-latency EP16 63 / 74 GB/s (the same CX7 NIC)",
        "efficiency": _EFFICIENCY,
        "layer_overhead_us": _OVERHEAD,
    },
)
PROFILES = {p.name: p for p in (H800, H100, H200, B200)}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What a pair, a message and the rest of a step weigh, from a model's config.

    ``hidden``: hidden size; ``intermediate``: one routed expert's intermediate size. The rest of
    a step (zero when unknown: then only the MoE part is priced, and ``whole`` is False):
    ``attention_params``: attention projection weights a layer; ``attention_flops``: attention's
    FLOPs per token per token of context a layer; ``kv_bytes``: KV cache bytes per token a layer;
    ``shared_intermediate``: the shared experts' intermediate size (summed); ``dense_layers`` and
    ``dense_intermediate``: layers with a dense MLP instead of experts; ``num_experts``: routed
    experts (the gate); ``vocab``: the output head's rows; ``source``: where the sizes come from."""

    hidden: int
    intermediate: int
    attention_params: int = 0
    attention_flops: int = 0
    kv_bytes: int = 0
    shared_intermediate: int = 0
    dense_layers: int = 0
    dense_intermediate: int = 0
    num_experts: int = 0
    vocab: int = 0
    source: str = "hidden and intermediate sizes only"

    @classmethod
    def from_config(cls, config: dict, source: str) -> ModelShape:
        """From a Hugging Face ``config.json`` (DeepSeek-V2/V3 and Kimi-K2 with multi-head latent
        attention, Qwen2/3-MoE, gpt-oss, Mixtral); which layers are dense by ``moe_layout``'s
        rules. Raises ``MoeplaceError`` when a size is missing or not a number."""
        layout = moe_layout(config)
        config = config.get("text_config") or config
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            intermediate = int(config.get("moe_intermediate_size") or config["intermediate_size"])
            if config.get("kv_lora_rank"):  # multi-head latent attention
                nope, rope, value = (
                    int(config[k]) for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
                )
                latent, rank = int(config["kv_lora_rank"]), int(config.get("q_lora_rank") or 0)
                query = (
                    hidden * rank + rank * heads * (nope + rope) if rank else hidden * heads * (nope + rope)
                )
                params = (
                    query
                    + hidden * (latent + rope)
                    + latent * heads * (nope + value)
                    + heads * value * hidden
                )
                flops, kv = 2 * heads * (nope + rope + value), 2 * (latent + rope)
            else:
                head_dim = int(config.get("head_dim") or hidden // heads)
                kv_heads = int(config.get("num_key_value_heads") or heads)
                params = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
                flops, kv = 4 * heads * head_dim, 4 * kv_heads * head_dim
            shared = (
                int(config.get("shared_expert_intermediate_size") or 0)
                or int(config.get("n_shared_experts") or 0) * intermediate
            )
            dense = layout.num_hidden_layers - len(layout.layer_ids)
            return cls(
                hidden=hidden,
                intermediate=intermediate,
                attention_params=params,
                attention_flops=flops,
                kv_bytes=kv,
                shared_intermediate=shared,
                dense_layers=dense,
                dense_intermediate=int(config["intermediate_size"]) if dense else 0,
                num_experts=layout.num_experts,
                vocab=int(config["vocab_size"]),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MoeplaceError(f"the model config lacks a size the step needs: {exc!r}") from None

    @property
    def whole(self) -> bool:
        """Whether the rest of a step is known (attention at least)."""
        return self.attention_params > 0

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


# Published configs (config.json on the Hugging Face hub), the sizes the step needs, of the models
# the shared traces come from and the ones users serve most
_MLA_V3 = {"qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "kv_lora_rank": 512}
CONFIGS = {
    "openai/gpt-oss-20b": {
        "num_hidden_layers": 24,
        "num_experts_per_tok": 4,
        "hidden_size": 2880,
        "intermediate_size": 2880,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "num_local_experts": 32,
        "vocab_size": 201088,
    },
    "deepseek-ai/DeepSeek-V2-Lite": {
        "num_hidden_layers": 27,
        "num_experts_per_tok": 6,
        "hidden_size": 2048,
        "moe_intermediate_size": 1408,
        "intermediate_size": 10944,
        "num_attention_heads": 16,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "kv_lora_rank": 512,
        "n_shared_experts": 2,
        "first_k_dense_replace": 1,
        "n_routed_experts": 64,
        "vocab_size": 102400,
    },
    "deepseek-ai/DeepSeek-V3": {
        "num_hidden_layers": 61,
        "num_experts_per_tok": 8,
        "hidden_size": 7168,
        "moe_intermediate_size": 2048,
        "intermediate_size": 18432,
        "num_attention_heads": 128,
        "q_lora_rank": 1536,
        **_MLA_V3,
        "n_shared_experts": 1,
        "first_k_dense_replace": 3,
        "n_routed_experts": 256,
        "vocab_size": 129280,
    },
    "moonshotai/Kimi-K2-Instruct": {
        "num_hidden_layers": 61,
        "num_experts_per_tok": 8,
        "hidden_size": 7168,
        "moe_intermediate_size": 2048,
        "intermediate_size": 18432,
        "num_attention_heads": 64,
        "q_lora_rank": 1536,
        **_MLA_V3,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "n_routed_experts": 384,
        "vocab_size": 163840,
    },
    "Qwen/Qwen2-57B-A14B": {
        "num_hidden_layers": 28,
        "num_experts_per_tok": 8,
        "hidden_size": 3584,
        "moe_intermediate_size": 2560,
        "intermediate_size": 18944,
        "shared_expert_intermediate_size": 20480,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "num_experts": 64,
        "vocab_size": 151936,
    },
    "Qwen/Qwen3-235B-A22B": {
        "num_hidden_layers": 94,
        "num_experts_per_tok": 8,
        "hidden_size": 4096,
        "moe_intermediate_size": 1536,
        "intermediate_size": 12288,
        "num_attention_heads": 64,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "vocab_size": 151936,
    },
}
CONFIGS["deepseek-ai/ESFT-vanilla-lite"] = CONFIGS["deepseek-ai/DeepSeek-V2-Lite"]  # the same architecture
CONFIGS["deepseek-ai/DeepSeek-R1"] = CONFIGS["deepseek-ai/DeepSeek-V3"]
SHAPES = {name: ModelShape.from_config(config, f"{name} config.json") for name, config in CONFIGS.items()}


def shape_of(model: str) -> ModelShape:
    """The shape of a known model (its name may carry a note, as the shared traces' do; a local
    path ending in a known name counts)."""
    for name, shape in SHAPES.items():
        if model.startswith(name) or model.split(" ")[0].lower().endswith(name.split("/")[1].lower()):
            return shape
    raise MoeplaceError(
        f"no sizes known for {model!r}: give {{=model_config}} (its config.json), or {{=hidden}} and "
        "{=intermediate} (the hidden size and one expert's intermediate size: the MoE part of a step only)"
    )


def read_model_shape(path: Path) -> ModelShape:
    """A model's sizes from its Hugging Face ``config.json`` at ``path`` (or in that folder)."""
    return read_config(path, lambda config: ModelShape.from_config(config, str(path)))


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a YAML file with the same fields (``gemm``,
    ``layer_overhead_us`` and ``sources`` optional)."""
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
            layer_overhead_us=float(doc.get("layer_overhead_us", 0.0)),
            gemm=tuple(sorted((float(t), float(f)) for t, f in doc.get("gemm") or ())),
            sources={str(k): str(v) for k, v in (doc.get("sources") or {}).items()},
        )
    except (AttributeError, KeyError, TypeError, ValueError, IndexError, MoeplaceError) as exc:
        raise file_error(
            path, f"not a profile: needs nvlink, rdma, tflops, hbm_tbps, efficiency ({exc})"
        ) from None


@dataclasses.dataclass(frozen=True)
class StepTime:
    """Estimated seconds per whole step. The MoE part, summed over MoE layers (each phase waits for
    its busiest rank): ``dispatch``, ``compute``, ``combine``, and ``overlapped`` (with
    two-micro-batch overlap: per layer the larger of communication and compute). ``rest``: the part
    no placement changes (attention, shared and dense layers, gate, head, overhead)."""

    dispatch: float
    compute: float
    combine: float
    overlapped: float
    rest: float = 0.0

    @property
    def communication(self) -> float:
        return self.dispatch + self.combine

    def moe(self, overlap: bool) -> float:
        """The MoE part: phases in a row, or with two-micro-batch overlap, layer by layer, the
        larger of communication and compute."""
        return self.overlapped if overlap else self.communication + self.compute

    def total(self, overlap: bool) -> float:
        """A whole step: the MoE part and the rest."""
        return self.moe(overlap) + self.rest


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

    pairs, experts = cost.straggler["pairs"], cost.straggler["experts"]
    compute = profile.seconds(
        pairs * shape.pair_flops, experts * shape.expert_bytes, pairs / np.maximum(experts, 1)
    )
    dispatch, combine = moving(dispatch_bytes, 0), moving(combine_bytes, 1)
    return StepTime(
        dispatch=float(dispatch.sum()),
        compute=float(compute.sum()),
        combine=float(combine.sum()),
        overlapped=float(np.maximum(dispatch + combine, compute).sum()),
        rest=rest_of_step(cost, shape, profile),
    )


def rest_of_step(cost: StepCost, shape: ModelShape, profile: Profile) -> float:
    """Seconds per step of what no placement changes, on one rank running a full batch of
    ``cost.batch`` tokens: over ``L`` MoE layers attention, shared experts and the gate, over the
    dense layers attention and the dense MLP, the output head for ``cost.logits`` tokens, and the
    profile's overhead per layer. Each GEMM the longer of its arithmetic and its FP8 weight reads;
    attention over ``cost.context`` tokens of context, the longer of its arithmetic and reading
    ``cost.kv_reads`` tokens of KV cache a token. Zero but the overhead when the model's rest is
    unknown (``shape.whole``)."""
    moe_layers = len(cost.straggler["pairs"])
    layers = moe_layers + shape.dense_layers
    overhead = layers * profile.layer_overhead_us * 1e-6
    if not shape.whole:
        return overhead
    tokens, hidden = cost.batch, shape.hidden

    def gemm(params: float, rows: float) -> float:
        """A GEMM of ``params`` FP8 weights over ``rows`` tokens."""
        return float(profile.seconds(2.0 * params * rows, params, rows))

    attention = gemm(shape.attention_params, tokens) + float(
        profile.seconds(
            tokens * cost.context * shape.attention_flops, tokens * cost.kv_reads * shape.kv_bytes, tokens
        )
    )
    shared = gemm(3 * hidden * shape.shared_intermediate, tokens) if shape.shared_intermediate else 0.0
    gate = gemm(hidden * shape.num_experts, tokens)
    dense = gemm(3 * hidden * shape.dense_intermediate, tokens) if shape.dense_layers else 0.0
    head = gemm(hidden * shape.vocab, cost.logits) if cost.logits > 0 else 0.0
    return overhead + layers * attention + moe_layers * (shared + gate) + shape.dense_layers * dense + head

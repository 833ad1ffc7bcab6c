"""Serving engines' own code, imported from their released archives with plumbing stubbed.

Each context manager extracts an archive once (``.engines/src/``), registers stub packages whose
``__path__`` is the extracted tree (so heavy package ``__init__`` files never run), replaces the
modules that need a GPU, a server or a process group with stubs, imports the engine's real
modules, and on exit restores ``sys.modules`` and every attribute it patched. Nothing of the
engines is copied here: where a function lives in a module that cannot be imported without a GPU
(SGLang's ``FusedMoE.weight_loader``, vllm-ascend's ``EplbConfig``), its source is read from the
archive with ``ast`` and executed with the few names it uses.
"""

from __future__ import annotations

import ast
import contextlib
import enum
import logging
import os
import types
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

torch = pytest.importorskip("torch")  # the engines' code runs on torch

from archive_files import ENGINES, FETCH, extracted, pinned


def archive(name: str, version: str) -> Path:
    """The pinned archive of ``name`` ``version`` (skips, saying how to fetch it, when absent)."""
    path = ENGINES / pinned(name, version)["file"]
    if not path.is_file():
        pytest.skip(f"{path.name} not fetched: run `{FETCH}` (the README's test command does)")
    return path


def source(name: str, version: str) -> Path:
    """The archive's Python files, extracted once; returns the directory holding the packages."""
    return extracted(archive(name, version))


@contextlib.contextmanager
def isolated(*patches: tuple[object, str, object]) -> Iterator[None]:
    """Restore ``sys.modules`` and the given ``(object, attribute, value)`` patches on exit."""
    import sys

    modules = dict(sys.modules)
    missing = object()
    saved = [(obj, attr, getattr(obj, attr, missing)) for obj, attr, _ in patches]
    for obj, attr, value in patches:
        setattr(obj, attr, value)
    try:
        yield
    finally:
        for name in set(sys.modules) - set(modules):
            del sys.modules[name]
        sys.modules.update(modules)
        for obj, attr, value in saved:
            if value is missing:
                delattr(obj, attr)
            else:
                setattr(obj, attr, value)


def module(name: str, path: Path | None = None, **attrs) -> types.ModuleType:
    """Register a stub module (a package over ``path`` when given) and attach it to its parent."""
    import sys

    stub = types.ModuleType(name)
    stub.__dict__.update(attrs)
    if path is not None:
        stub.__path__ = [str(path)]
    sys.modules[name] = stub
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, stub)
    return stub


def definitions(path: Path, names: set[str], namespace: dict) -> dict:
    """Execute the top-level classes/functions ``names`` of ``path`` (or methods ``Class.name``) in
    ``namespace``; returns it."""
    tree = ast.parse(path.read_text())
    nodes = []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in names:
            nodes.append(node)
        if isinstance(node, ast.ClassDef):
            nodes += [m for m in node.body if f"{node.name}.{getattr(m, 'name', '')}" in names]
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def _env_flag(name, default="false"):
    return os.getenv(name, default).lower() in ("true", "1")


def _env_int(name, default=0):
    value = os.getenv(name)
    return int(value) if value and value.strip().isdigit() else default


class ForwardMode(enum.IntEnum):
    """SGLang's ForwardMode values the recorder reads (the same numbers in 0.5.2 and 0.5.23)."""

    EXTEND = 1
    DECODE = 2
    IDLE = 4


def _einops_reduce(tensor, pattern, op, **sizes):
    """The two reductions SGLang's recorder asks einops for (only its utilization metrics use them)."""
    if "(num_gpu num_expert_per_gpu)" in pattern:
        return tensor.unflatten(-1, (sizes["num_gpu"], -1)).sum(-1)
    return tensor.amax(-1) if op == "max" else tensor.mean(-1)


def _moe_settings(redundant: int, dispatch: str, a2a_backend: str, recorder_mode: str | None) -> NS:
    """The MoE server arguments SGLang's EPLB code reads, set as a launch would (no server parses them)."""
    return NS(
        ep_num_redundant_experts=redundant,
        ep_dispatch_algorithm=dispatch,
        moe_a2a_backend=a2a_backend,
        deepep_mode="normal",
        ep_join_mode=None,
        eplb_algorithm="auto",
        init_expert_location="trivial",
        expert_distribution_recorder_mode=recorder_mode,
        expert_distribution_recorder_buffer_size=-1,
        expert_balancedness_report_mode=None,
        eplb_min_rebalancing_utilization_threshold=1.0,
        elastic_ep_backend=None,
    )


def _one_process_ranks(rank_now: dict, ep_size: int) -> list[tuple[object, str, object]]:
    """torch.distributed and torch.cpu patched: one process plays each EP rank in turn, no process group."""
    reduced = []  # stat dumps all-reduce their counts over the ranks; ranks dump in turn here

    def all_reduce(tensor, op=None, group=None):
        reduced.append(tensor.clone())
        tensor.copy_(torch.stack(reduced).sum(0))  # the last rank to dump holds every rank's sum

    return [
        (torch.distributed, "get_rank", lambda group=None: rank_now["rank"]),
        (torch.distributed, "get_world_size", lambda group=None: ep_size),
        (torch.distributed, "all_reduce", all_reduce),
        (torch.cpu, "is_current_stream_capturing", lambda: False),
        (torch.cpu, "empty_cache", lambda: None),
    ]


def _stub_packages(root: Path, srt: Path) -> None:
    """sglang and sglang.srt over the archive (their ``__init__`` start the server), einops, ForwardMode."""
    module("einops", reduce=_einops_reduce)
    module("sglang", root / "sglang")
    module("sglang.srt", srt)
    module("sglang.srt.model_executor")
    module("sglang.srt.model_executor.forward_batch_info", ForwardBatch=object, ForwardMode=ForwardMode)


class _Model:  # the model class SGLang asks for its expert layout (DeepSeek's classmethod)
    @classmethod
    def get_model_config_for_expert_location(cls, config):
        from sglang.srt.eplb.expert_location import ModelConfigForExpertLocation

        return ModelConfigForExpertLocation(
            num_layers=config.num_hidden_layers, num_logical_experts=config.n_routed_experts
        )


def _stub_model_loader() -> None:
    """SGLang's model loader, answering with ``_Model``: the real one imports every model and its kernels."""
    module("sglang.srt.model_loader", get_model_architecture=lambda model_config: (_Model, None))


def _withable(srt: Path, old: bool) -> type:
    """SGLang's own ``Withable``, read from its utils file: the utils module needs the GPU stack."""
    withable_file = srt / ("utils.py" if old else "utils/common.py")
    return definitions(withable_file, {"Withable"}, _typing_names())["Withable"]


def _stub_server_args_0_5_2(withable: type, moe: NS, ep_size: int, chunked_prefill_size: int):
    """0.5.2's utils, ServerArgs and global dict (they import the server); returns its ``settings()``."""
    server_args = NS(
        device="cpu",
        ep_size=ep_size,
        nnodes=1,
        enable_expert_distribution_metrics=False,
        chunked_prefill_size=chunked_prefill_size,
        enable_two_batch_overlap=False,
    )
    module("sglang.srt.utils", Withable=withable, get_bool_env_var=_env_flag, is_npu=lambda: False)
    module("sglang.srt.server_args", ServerArgs=object)
    module("sglang.srt.managers")
    module("sglang.srt.managers.schedule_batch", global_server_args_dict={})

    def settings():  # 0.5.2 reads one server_args object and a global dict
        server_args.__dict__.update(moe.__dict__)
        module_dict = __import__("sys").modules["sglang.srt.managers.schedule_batch"]
        module_dict.global_server_args_dict["ep_dispatch_algorithm"] = moe.ep_dispatch_algorithm
        return server_args

    return settings


def _stub_runtime_context(withable: type, moe: NS, ep_size: int, chunked_prefill_size: int):
    """Newer SGLang's utils, metrics, MoE backend, elastic EP, runtime context (server state); no settings."""
    module(
        "sglang.srt.utils",
        Withable=withable,
        get_device=lambda *a, **k: "cpu",
        get_int_env_var=_env_int,
        get_bool_env_var=_env_flag,
    )
    module("sglang.srt.observability")
    module(
        "sglang.srt.observability.metrics_collector",
        STAT_LOGGER_ROLE_EXPERT_DISPATCH="expert_dispatch",
        ExpertDispatchCollector=object,
        resolve_collector_class=lambda role, default: default,
    )
    module("sglang.srt.layers")
    module(
        "sglang.srt.layers.moe",
        get_moe_a2a_backend=lambda: NS(
            is_megamoe=lambda: False, is_none=lambda: moe.moe_a2a_backend == "none"
        ),
    )
    module("sglang.srt.elastic_ep")
    module("sglang.srt.elastic_ep.elastic_ep", elastic_expanded_world_enabled=lambda: False)
    parallel = NS(
        ep_size=ep_size,
        tp_size=ep_size,
        nnodes=1,
        elastic_ep_initial_size=None,
        ep_join_rank_offset=0,
    )
    resources = NS(expert_location_metadata=None, expert_distribution_recorder=None)
    module(
        "sglang.srt.runtime_context",
        get_exec=lambda: NS(moe=moe, overlap=NS(enable_two_batch_overlap=False)),
        get_schedule=lambda: NS(chunked_prefill_size=chunked_prefill_size),
        get_device=lambda: NS(device="cpu"),
        get_platform=lambda: NS(is_hip=False),
        get_parallel=lambda: parallel,
        get_resources=lambda: resources,
        reports_expert_balancedness=lambda: False,
        logs_expert_balancedness_to_server_log=lambda: False,
    )

    def settings():
        return None

    return settings


@contextlib.contextmanager
def sglang(
    version: str,
    *,
    num_hidden_layers: int,
    num_experts: int,
    ep_size: int,
    redundant: int = 0,
    a2a_backend: str = "none",
    dispatch: str = "static",
    recorder_mode: str | None = None,
    chunked_prefill_size: int = 512,
) -> Iterator[NS]:
    """SGLang's real ``eplb.expert_location`` and ``eplb.expert_distribution`` for a DeepSeek-like
    model of ``num_hidden_layers`` layers and ``num_experts`` routed experts.

    Yields ``metadata(rank, init_expert_location)`` (what ``compute_initial_expert_location_metadata``
    gives that EP rank), ``loaded_slots(metadata, rank, layer)`` (the global slots SGLang's own
    ``FusedMoE.weight_loader`` fills on that rank), ``recorder(rank)`` and ``forward_batch(...)``.
    """
    root = source("sglang", version)
    srt = root / "sglang" / "srt"
    old = version == "0.5.2"
    rank_now = {"rank": 0}
    moe = _moe_settings(redundant, dispatch, a2a_backend, recorder_mode)
    with isolated(*_one_process_ranks(rank_now, ep_size)):
        _stub_packages(root, srt)
        _stub_model_loader()
        model_config = NS(hf_config=NS(num_hidden_layers=num_hidden_layers, n_routed_experts=num_experts))
        stub_server_state = _stub_server_args_0_5_2 if old else _stub_runtime_context
        settings = stub_server_state(_withable(srt, old), moe, ep_size, chunked_prefill_size)
        location = __import__("sglang.srt.eplb.expert_location", fromlist=["*"])
        distribution = __import__("sglang.srt.eplb.expert_distribution", fromlist=["*"])
        if old:  # 0.5.2's stat gatherer allocates on device="cuda": the same tensors on the CPU
            distribution.torch = _CpuTorch()

        def metadata(rank: int, init_expert_location: str):
            moe.init_expert_location = init_expert_location
            rank_now["rank"] = rank
            args = settings()
            if old:
                return location.compute_initial_expert_location_metadata(args, model_config)
            return location.compute_initial_expert_location_metadata(model_config, moe_ep_rank=rank)

        loader = _weight_loader(srt, location)

        def loaded_slots(meta, rank: int, layer: int) -> list[int]:
            if old:
                location._global_expert_location_metadata = meta
            else:
                location.set_global_expert_location_metadata(meta, allow_overwrite=True)
            return loader(meta, rank, ep_size, layer, num_experts)

        def recorder(rank: int, init_expert_location: str = "trivial"):
            """SGLang's recorder for ``rank``, serving the placement ``init_expert_location``."""
            meta = metadata(rank, init_expert_location)
            if old:
                return distribution.ExpertDistributionRecorder.init_new(settings(), meta, rank)
            return distribution.ExpertDistributionRecorder.init_new(meta, rank)

        yield NS(metadata=metadata, loaded_slots=loaded_slots, recorder=recorder, settings=moe)


def forward_batch(input_ids: list[int], positions: list[int], extend_seq_lens: list[int] | None, mode):
    """The fields of SGLang's ForwardBatch its recorder reads at the start of a pass."""
    return NS(
        input_ids=torch.tensor(input_ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        extend_seq_lens_cpu=extend_seq_lens,
        forward_mode=mode,
        extend_num_tokens=len(input_ids),
        is_extend_in_batch=mode == ForwardMode.EXTEND,
    )


class _CpuTorch:
    """torch, with ``zeros`` ignoring the device it is asked for."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, device=None, **kwargs):
        return torch.zeros(*args, **kwargs)


def _typing_names() -> dict:
    from contextlib import contextmanager
    from typing import Generic, Optional, TypeVar

    return {
        "Generic": Generic,
        "Optional": Optional,
        "TypeVar": TypeVar,
        "contextmanager": contextmanager,
        "T": TypeVar("T"),
    }


def _weight_loader(srt: Path, location):
    """SGLang's own ``FusedMoE.weight_loader`` (read from its file: the module needs triton) run on
    a layer that records which local slot each checkpoint expert's weights go to."""
    from typing import Optional

    names = {
        "FusedMoE.weight_loader",
        "FusedMoE._weight_loader_physical",
        "FusedMoE._map_global_expert_id_to_local_expert_id",
    }
    namespace = definitions(
        srt / "layers" / "moe" / "fused_moe_triton" / "layer.py",
        names,
        {
            "torch": torch,
            "Optional": Optional,
            "get_global_expert_location_metadata": location.get_global_expert_location_metadata,
            "uses_per_rank_fused_shared_slots": lambda: False,
            "KTEPWrapperMethod": type("KTEPWrapperMethod", (), {}),
        },
    )

    def load(meta, rank, ep_size, layer, num_experts):
        per_rank = meta.num_physical_experts // ep_size
        written = set()
        layer_object = NS(
            layer_id=layer,
            quant_config=None,
            quant_method=None,
            uses_expert_location=True,
            num_fused_shared_experts=0,
            _has_fused_shared=False,
            moe_ep_rank=rank,
            _expert_storage_rank=rank,
            moe_ep_size=ep_size,
            _num_local_routed=per_rank,
            num_local_experts=per_rank,
            _num_global_routed=per_rank * ep_size,
            num_experts=per_rank * ep_size,
            expert_map_cpu=torch.full((per_rank * ep_size,), -1, dtype=torch.int32),
            _weight_loader_impl=lambda param, loaded_weight, weight_name, shard_id, expert_id: written.add(
                int(expert_id)
            ),
        )
        layer_object.expert_map_cpu[rank * per_rank : (rank + 1) * per_rank] = torch.arange(
            per_rank, dtype=torch.int32
        )
        for name in names:
            method = name.split(".")[1]
            setattr(layer_object, method, types.MethodType(namespace[method], layer_object))
        for expert in range(num_experts):  # the checkpoint holds logical experts 0..N-1
            layer_object.weight_loader(None, None, "w13_weight", "w1", expert)
        return sorted(rank * per_rank + local for local in written)

    return load


@contextlib.contextmanager
def vllm_ascend(version: str) -> Iterator[NS]:
    """vllm-ascend's real ``eplb.core.eplb_utils`` and its ``EplbConfig`` (read from
    ``ascend_config.py``), with vLLM and torch_npu stubbed as vllm-ascend's own unit tests do."""
    root = source("vllm-ascend", version)
    logger = logging.getLogger("vllm-ascend-under-test")

    def determine_expert_map(ep_size, ep_rank, num_experts):  # vLLM's default, used with no map only
        local = num_experts // ep_size
        expert_map = torch.full((num_experts,), -1, dtype=torch.int32)
        expert_map[ep_rank * local : (ep_rank + 1) * local] = torch.arange(local, dtype=torch.int32)
        return local, expert_map, None

    patches = [
        (torch.Tensor, "npu", lambda self, *args, **kwargs: self),
        (torch, "npu", NS(is_available=lambda: False, current_device=lambda: 0)),
    ]
    with isolated(*patches):
        for name in ("vllm", "vllm.model_executor", "vllm.model_executor.layers"):
            module(name, Path("/nonexistent"))
        module("vllm.model_executor.layers.fused_moe", Path("/nonexistent"))
        module("vllm.logger", logger=logger, init_logger=lambda name: logger)
        module(
            "vllm.model_executor.layers.fused_moe.expert_map_manager",
            determine_expert_map=determine_expert_map,
        )
        module("vllm_ascend", root / "vllm_ascend")
        eplb_utils = __import__("vllm_ascend.eplb.core.eplb_utils", fromlist=["*"])
        # a registered module: dataclasses look the class's module up in sys.modules
        namespace = module("vllm_ascend.ascend_config", os=os, logger=logger).__dict__
        if version != "0.23.0":
            import dataclasses
            import math
            import typing
            from statistics import NormalDist

            from pydantic import ConfigDict, TypeAdapter, field_validator, model_validator

            config = __import__("vllm_ascend.config_utils", fromlist=["config"]).config
            namespace.update(
                config=config,
                model_validator=model_validator,
                field_validator=field_validator,
                ConfigDict=ConfigDict,
                TypeAdapter=TypeAdapter,
                NormalDist=NormalDist,
                Literal=typing.Literal,
                ClassVar=typing.ClassVar,
                Any=typing.Any,
                math=math,
                dataclasses=dataclasses,
            )
        config_file = root / "vllm_ascend" / "ascend_config.py"
        eplb_class = definitions(config_file, {"EplbConfig", "StairConfig"}, namespace)["EplbConfig"]

        def eplb_config(settings: dict):
            return eplb_class(settings) if version == "0.23.0" else eplb_class(**settings)

        def rank_maps(config, moe_ordinal: int, num_experts: int, ep_size: int) -> list[tuple]:
            """Per rank: (local expert map logical -> local slot, log2phy logical -> physical slot)."""
            out = []
            for rank in range(ep_size):
                moe_config = NS(num_experts=num_experts, ep_size=ep_size, ep_rank=rank)
                _, local_map, log2phy, _ = eplb_utils.init_eplb_config(
                    config, moe_ordinal, moe_config, mix_placement=False, num_shared_experts=0, tp_size=None
                )
                out.append((local_map, log2phy))
            return out

        yield NS(eplb_config=eplb_config, rank_maps=rank_maps)


_VLLM_FILES: dict[tuple[str, str], types.ModuleType] = {}


def vllm_file(version: str, relative: str) -> types.ModuleType:
    """One source file of vLLM ``version``, loaded by path (vLLM's package needs its compiled
    extensions), once per process: vLLM 0.21's capturer registers a torch custom op on import."""
    import base64
    import importlib.util

    key = (version, relative)
    if key not in _VLLM_FILES:
        path = source("vllm", version) / relative
        name = f"vllm_{version.replace('.', '_')}_{path.stem}"
        with isolated():
            for package in ("vllm", "vllm.config"):
                module(package, Path("/nonexistent"))
            module("vllm.config.model", ModelConfig=object)  # an annotation only
            module("pybase64", b64encode=base64.b64encode)  # the same bytes as pybase64's
            spec = importlib.util.spec_from_file_location(name, path)
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
        _VLLM_FILES[key] = loaded
    return _VLLM_FILES[key]

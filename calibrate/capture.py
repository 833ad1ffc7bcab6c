"""Capture routing from a Hugging Face MoE model: forward hooks on each MoE layer's router.

In transformers 5 every supported family (OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3,
GPT-OSS) has a router module at ``layers.<i>.mlp.gate`` (``.mlp.router`` for GPT-OSS) that returns
``(router_logits, topk_weights, topk_indices)``, and the MoE block hands exactly those indices to
its experts. Hooking the router therefore records the real decision, including DeepSeek-V3's
sigmoid + correction bias + group-limited selection, which top-k of the raw logits would get wrong.
Dense layers have no router and are skipped.

torch and transformers are imported by this module only: planning and validation never need them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from moeplace.calibrate.corpus import Document
from moeplace.calibrate.model_config import DTYPE_NAMES, group_limit
from moeplace.calibrate.trace import TraceMeta
from moeplace.calibrate.trace_io import TraceWriter
from moeplace.errors import MoeplaceError

ROUTER_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(?:gate|router)$")
DTYPES = {name: name if name == "auto" else getattr(torch, name) for name in DTYPE_NAMES}


def load_model(name_or_path: str, device: str = "cpu", dtype: str = "auto"):
    """The base model (no LM head: routing needs none) and its tokenizer, ready for inference.

    ``device``: ``cpu``, ``cuda``, ``cuda:N``, ... or ``auto`` to spread a large model over all GPUs
    (``device_map="auto"``). Raises ``MoeplaceError`` if the model or tokenizer cannot be loaded.
    """
    import transformers

    if dtype not in DTYPES:
        raise MoeplaceError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if name_or_path.startswith(("/", "./", "../", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise MoeplaceError(f"{name_or_path}: no such model folder")  # a path, not a hub id: say so
    kwargs = {"dtype": DTYPES[dtype]} | ({"device_map": "auto"} if device == "auto" else {})
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the dropped LM head is reported as "unexpected"
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
        model = transformers.AutoModel.from_pretrained(name_or_path, **kwargs)
        if device != "auto":
            model.to(device)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoeplaceError(f"{name_or_path}: cannot load the model or its tokenizer ({reason})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.eval(), tokenizer


def find_routers(model: torch.nn.Module) -> list[tuple[int, torch.nn.Module]]:
    """``(model layer index, router module)`` of every MoE layer, in layer order."""
    routers = sorted(
        (int(match.group(1)), module)
        for name, module in model.named_modules()
        if (match := ROUTER_NAME.search(name)) and hasattr(module, "top_k") and hasattr(module, "num_experts")
    )
    if not routers:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise MoeplaceError(
            f"{kind}: no MoE router found. Looked for modules named layers.<i>.mlp.gate or "
            "layers.<i>.mlp.router with top_k and num_experts, returning (logits, weights, top-k "
            "indices): the routers of OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3 and GPT-OSS "
            "in transformers 5"
        )
    shapes = {(int(module.top_k), int(module.num_experts)) for _, module in routers}
    if len(shapes) != 1:
        raise MoeplaceError(f"MoE layers disagree on (top_k, num_experts): {sorted(shapes)}")
    return routers


class RouterRecorder:
    """Forward hooks that keep each router's returned top-k indices for the current forward pass.

    ``with RouterRecorder(routers) as recorder: model(...); ids = recorder.take(batch, seq)``
    """

    def __init__(self, routers: Sequence[tuple[int, torch.nn.Module]]):
        self.routers = list(routers)
        self.captured: list[torch.Tensor | None] = [None] * len(self.routers)
        self.handles = []

    def __enter__(self) -> RouterRecorder:
        for position, (layer_id, module) in enumerate(self.routers):
            self.handles.append(module.register_forward_hook(self._hook(position, layer_id)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, position: int, layer_id: int):
        def record(module, inputs, output):
            indices = output[-1] if isinstance(output, tuple) else None
            if indices is None or indices.is_floating_point() or indices.ndim != 2:
                raise MoeplaceError(
                    f"router of layer {layer_id} ({type(module).__name__}) did not return top-k indices "
                    "[tokens, k] as its last output"
                )
            self.captured[position] = indices.detach().to(torch.int16)  # stays on device until take()

        return record

    def take(self, batch: int, seq: int) -> np.ndarray:
        """Ids of the last forward pass, int16 ``[batch, seq, L, k]`` (router input is batch-major)."""
        if any(t is None for t in self.captured):
            raise MoeplaceError("a MoE layer's router did not run during the forward pass")
        on_one_device = len({t.device for t in self.captured}) == 1
        layers = (
            torch.stack(self.captured).cpu()
            if on_one_device
            else torch.stack([t.cpu() for t in self.captured])
        )
        self.captured = [None] * len(self.routers)
        return layers.numpy().reshape(len(self.routers), batch, seq, -1).transpose(1, 2, 0, 3)


def trace_meta(model: torch.nn.Module, name: str, corpus: Sequence[str], max_length: int) -> TraceMeta:
    """What the trace of ``model`` will say about itself."""
    routers = find_routers(model)
    groups, per_token = group_limit(model.config.to_dict()) or (None, None)
    return TraceMeta(
        model=name,
        num_experts=int(routers[0][1].num_experts),
        top_k=int(routers[0][1].top_k),
        layer_ids=tuple(layer_id for layer_id, _ in routers),
        num_hidden_layers=getattr(model.config, "num_hidden_layers", None),
        routing_groups=groups,
        groups_per_token=per_token,
        phase="prefill",
        source=f"moeplace calibrate on {', '.join(corpus)}",
        note=f"documents longer than {max_length} tokens run as consecutive windows without earlier context",
    )


def tokenize(tokenizer, documents: Sequence[Document]) -> list[np.ndarray]:
    """Token ids of each document (with the tokenizer's special tokens), int64 ``[t]`` each."""
    ids = []
    for start in range(0, len(documents), 256):
        texts = [doc.text for doc in documents[start : start + 256]]
        ids.extend(np.asarray(x, dtype=np.int64) for x in tokenizer(texts)["input_ids"])
    return ids


def capture_routing(
    model: torch.nn.Module,
    documents: Sequence[Document],
    token_ids: Sequence[np.ndarray],
    writer: TraceWriter,
    *,
    max_length: int = 2048,
    batch_size: int = 8,
    max_tokens: int | None = None,
    on_tokens: Callable[[int], None] | None = None,
) -> None:
    """Run the documents through ``model`` and append each one's routing to ``writer``, in order.

    A document longer than ``max_length`` runs as consecutive windows; batches are right-padded
    and the padding dropped with the attention mask. ``max_tokens`` stops after that many tokens
    (the last document cut short); ``on_tokens(n)`` reports progress after every batch.
    """
    windows = _windows(token_ids, max_length, max_tokens)
    remaining = np.bincount([doc for doc, _ in windows], minlength=len(documents))
    parts: dict[int, list[np.ndarray]] = {}
    next_doc = 0
    device = model.get_input_embeddings().weight.device
    with RouterRecorder(find_routers(model)) as recorder, torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            lengths = [tokens.shape[0] for _, tokens in batch]
            input_ids = torch.zeros((len(batch), max(lengths)), dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for row, (_, tokens) in enumerate(batch):
                input_ids[row, : tokens.shape[0]] = torch.from_numpy(tokens)
                mask[row, : tokens.shape[0]] = 1
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
            ids = recorder.take(len(batch), input_ids.shape[1])
            for row, (doc, tokens) in enumerate(batch):
                parts.setdefault(doc, []).append(ids[row, : tokens.shape[0]])
                remaining[doc] -= 1
            while next_doc < len(documents) and remaining[next_doc] == 0:  # write finished documents
                if next_doc in parts:
                    writer.add(np.concatenate(parts.pop(next_doc)), documents[next_doc].label)
                next_doc += 1
            if on_tokens is not None:
                on_tokens(sum(lengths))


def _windows(token_ids, max_length: int, max_tokens: int | None) -> list[tuple[int, np.ndarray]]:
    """(document, token ids) pieces of at most ``max_length``, stopping at ``max_tokens`` in all."""
    if max_length < 1:
        raise MoeplaceError(f"the maximum length must be at least 1, got {max_length}")
    windows, budget = [], max_tokens if max_tokens is not None else float("inf")
    for doc, ids in enumerate(token_ids):
        for start in range(0, ids.shape[0], max_length):
            if budget <= 0:
                return windows
            piece = ids[start : start + int(min(max_length, budget))]
            windows.append((doc, piece))
            budget -= piece.shape[0]
    return windows

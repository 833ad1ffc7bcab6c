"""Calibration commands: calibrate (capture from a model), import (engine recordings), merge."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from moeplace.atomic import check_distinct, check_unique
from moeplace.calibrate.corpus import read_corpus
from moeplace.calibrate.importers import IMPORTERS, ImportOptions
from moeplace.calibrate.merge import merged_meta, trace_documents
from moeplace.calibrate.model_config import DTYPE_NAMES, read_model_config
from moeplace.calibrate.stats import DEFAULT_RESAMPLES, DEFAULT_SET_TOKENS, Statistics
from moeplace.calibrate.stats_io import (
    as_statistics,
    load_trace_or_statistics,
    save_statistics,
    statistics_of_file,
)
from moeplace.calibrate.trace import MAX_EXPERTS, MAX_LAYERS, Trace
from moeplace.calibrate.trace_io import trace_writer
from moeplace.cli.app import user_errors
from moeplace.cli.console import named, out
from moeplace.cli.options import ResampleByOpt, ResamplesOpt, ResampleUnit, SeedOpt, SetTokensOpt, choices
from moeplace.cli.parsing import parse_ints
from moeplace.cli.progress import progress_bar
from moeplace.cluster import cluster_executor
from moeplace.errors import MoeplaceError

OutTrace = Annotated[
    Path,
    typer.Option("--out", help="Trace to write: a directory, or an interchange file if it ends in .npz."),
]

ImportFormat = choices("ImportFormat", IMPORTERS)
Dtype = choices("Dtype", DTYPE_NAMES)


@user_errors
def calibrate(
    model: Annotated[str, typer.Argument(help="Hugging Face model id or a local folder (save_pretrained).")],
    corpus: Annotated[
        list[Path],
        typer.Option(
            help="Corpus file(s): plain text, one document per blank-line-separated block, or JSONL "
            "with 'text' and an optional 'domain' label. `--corpus a.txt b.jsonl` or repeat the option."
        ),
    ],
    out_path: OutTrace,
    more_corpus: Annotated[list[Path] | None, typer.Argument(hidden=True)] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Stop after this many tokens.")] = None,
    max_length: Annotated[
        int, typer.Option(min=1, help="Longest sequence per forward pass; longer documents run as windows.")
    ] = 2048,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 8,
    device: Annotated[
        str, typer.Option(help="cpu, cuda, cuda:N, ... or auto (spread over all GPUs).")
    ] = "cpu",
    dtype: Annotated[Dtype, typer.Option(help="Weights' dtype (auto: the checkpoint's).")] = Dtype.auto,
):
    """Run a Hugging Face MoE model on a corpus and record the experts its routers choose."""
    try:
        from moeplace.calibrate import capture
    except ImportError:
        raise MoeplaceError(
            "calibrate needs torch and transformers: pip install 'moeplace[calibrate]'"
        ) from None
    files = [*corpus, *(more_corpus or [])]
    check_distinct([*files, model if Path(model).exists() else None], [out_path])
    documents = read_corpus(files)
    network, tokenizer = capture.load_model(model, device, dtype.value)
    token_ids = capture.tokenize(tokenizer, documents)
    total = sum(ids.shape[0] for ids in token_ids)
    total = min(total, max_tokens) if max_tokens else total
    meta = capture.trace_meta(network, model, [str(f) for f in files], max_length)
    with progress_bar("calibrating", total, unit="tok") as advance, trace_writer(out_path, meta) as writer:
        capture.capture_routing(
            network,
            documents,
            token_ids,
            writer,
            max_length=max_length,
            batch_size=batch_size,
            max_tokens=max_tokens,
            on_tokens=advance,
        )
    out.print(
        f"{writer.num_tokens} tokens, {len(writer.lengths)} documents, {len(meta.layer_ids)} MoE layers "
        f"({meta.num_experts} experts, top-{meta.top_k}) -> {out_path}"
    )


@user_errors
def import_(
    fmt: Annotated[ImportFormat, typer.Argument(metavar="FORMAT", help="What recorded the sources.")],
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Recorded files (SGLang: one .pt per rank); trtllm-stat: directories, each its "
            "EXPERT_STATISTIC_PATH."
        ),
    ],
    out_path: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Trace to write (directory or .npz); statistics .npz for sglang-stat, sglang-load and "
            "trtllm-stat.",
        ),
    ],
    model: Annotated[str | None, typer.Option(help="Model name to record (dumps may not say).")] = None,
    num_experts: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_EXPERTS, help="Routed experts per layer (vllm: or --model-config)."),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_EXPERTS,
            help="Experts per token (sglang-stat, sglang-load: or --model-config; trtllm-stat: a check).",
        ),
    ] = None,
    layer_ids: Annotated[
        str | None,
        typer.Option(help="vllm: the model's layer index of each MoE layer, e.g. 1-26 (or --model-config)."),
    ] = None,
    model_config: Annotated[
        Path | None,
        typer.Option(
            help="vllm, sglang-load, trtllm-stat: the model's config.json (or its folder): which layers "
            "are MoE, how many layers and experts, top-k, routing groups. Needed for models with dense "
            "layers (DeepSeek, some Qwen-MoE)."
        ),
    ] = None,
    tp_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="sglang-stat: the server's --tp-size. Without an all-to-all MoE backend every TP rank "
            "counts every token, so the summed counts are divided by it.",
        ),
    ] = 1,
    moe_a2a_backend: Annotated[
        str,
        typer.Option(
            help="sglang-stat: the server's --moe-a2a-backend (none, deepep, mooncake, ...); with one, "
            "each rank counts only its own tokens."
        ),
    ] = "none",
    label: Annotated[
        str | None,
        typer.Option(
            help="sglang-load, trtllm-stat: the workload of each file (trtllm-stat: directory), "
            "comma-separated, one a source (default: the file names without extension, the directory "
            "names). Sources with the same label are shards of one workload and sum."
        ),
    ] = None,
    iterations: Annotated[
        str | None,
        typer.Option(
            metavar="A:B",
            help="trtllm-stat: keep the iterations A <= iter < B, as TensorRT-LLM's own config generator "
            "selects them (default: all recorded).",
        ),
    ] = None,
):
    """Turn routing recorded by a serving engine into a moeplace trace (or load-only statistics).

    sglang: --expert-distribution-recorder-mode per_token dumps, every rank's (SGLang 0.5.2 to
    0.5.23); sglang-stat: stat dumps of one recording, ranks summed (expert load only); sglang-load:
    {"logical_count": [layers, experts]} JSON load records, one workload a file, kept apart (the input
    of the robust solver); trtllm-stat: TensorRT-LLM expert statistics (EXPERT_STATISTIC_PATH:
    meta_info.json, rank*.safetensors), one workload a directory, ranks summed, kept apart like
    sglang-load; vllm: JSONL of request outputs with routed_experts (vLLM 0.21 and 0.27+); npz:
    interchange traces.
    """
    config_file = model_config / "config.json" if model_config and model_config.is_dir() else model_config
    check_distinct([*sources, config_file], [out_path])
    layers = tuple(parse_ints(layer_ids, "--layer-ids")) if layer_ids else None
    if layers and (len(set(layers)) != len(layers) or max(layers) >= MAX_LAYERS):
        raise MoeplaceError(f"--layer-ids must name distinct model layers in 0..{MAX_LAYERS - 1}")
    check_unique(sources)
    options = ImportOptions(
        layout=read_model_config(model_config) if model_config else None,
        model=model,
        num_experts=num_experts,
        top_k=top_k,
        layer_ids=layers,
        counted_by=tp_size if moe_a2a_backend == "none" else 1,
        labels=tuple(x.strip() for x in label.split(",")) if label is not None else None,
        iterations=_parse_iterations(iterations) if iterations is not None else None,
    )
    if options.iterations is not None and fmt.value != "trtllm-stat":
        raise MoeplaceError(f"--iterations selects TensorRT-LLM iterations (trtllm-stat), not {fmt.value}'s")
    if options.labels is not None and not all(options.labels):
        raise MoeplaceError("--label: a workload label is empty")
    result = IMPORTERS[fmt.value](sources, options)
    if isinstance(result, Statistics):
        _require_npz(out_path, "statistics")
        save_statistics(result, out_path)
        layers = len(result.meta.layer_ids)
        workloads = f", {len(result.workloads)} workloads" if result.workloads else ""
        out.print(
            f"expert load of {layers} MoE layers{workloads} (load only: no co-activation) -> {out_path}"
        )
        return
    meta, documents = result
    with trace_writer(out_path, meta) as writer:
        for ids, label in documents:
            writer.add(ids, label)
    out.print(
        f"{writer.num_tokens} tokens, {len(writer.lengths)} documents, {len(meta.layer_ids)} MoE layers "
        f"({meta.num_experts} experts, top-{meta.top_k}) -> {out_path}"
    )


def _parse_iterations(text: str) -> tuple[int, int]:
    """``"100:200"`` -> (100, 200): the iterations 100 <= iter < 200."""
    start, colon, stop = text.partition(":")
    if not colon or not all(part.strip().isascii() and part.strip().isdigit() for part in (start, stop)):
        raise MoeplaceError(
            f"--iterations must be A:B, the iterations A <= iter < B (such as 100:200), got {text!r}"
        )
    return int(start), int(stop)  # the importer refuses A >= B


@user_errors
def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Traces and/or statistics files of one model.")],
    out_path: Annotated[
        Path, typer.Option("--out", help="Merged trace, or statistics .npz if any input is statistics.")
    ],
    resamples: ResamplesOpt = DEFAULT_RESAMPLES,
    resample_by: ResampleByOpt = ResampleUnit.documents,
    seed: SeedOpt = 0,
    set_tokens: SetTokensOpt = DEFAULT_SET_TOKENS,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Compute each trace's statistics on a Dask cluster's workers (a scheduler address, whose "
            "workers read the input paths, or local), then sum them here: the output is statistics, the "
            "same bytes as without it (pip install 'moeplace[cluster]').",
        ),
    ] = None,
):
    """Merge routing recorded on several machines or GPUs into one trace (or statistics).

    Traces concatenate document by document. If any input is a statistics file (or with
    --cluster), every trace is turned into statistics too (with --resamples and --seed, which must
    match the statistics inputs) and all are summed: exactly the statistics of the concatenated trace.
    """
    if len(inputs) < 2:
        raise MoeplaceError("merge needs at least two inputs")
    check_unique(inputs)
    check_distinct(inputs, [out_path])
    sources = [load_trace_or_statistics(path) for path in inputs]
    traces = [source for source in sources if isinstance(source, Trace)]
    if len(traces) == len(sources) and cluster is None:
        meta = merged_meta(traces, inputs)
        with trace_writer(out_path, meta) as writer:
            for trace in traces:
                for ids, label in trace_documents(trace):
                    writer.add(ids, label)
        documents = len(writer.lengths)
        out.print(
            f"{writer.num_tokens} tokens, {documents} documents from {len(inputs)} traces -> {out_path}"
        )
        return
    _require_npz(out_path, "merged statistics")
    options = dict(resamples=resamples, seed=seed, resample_by=resample_by.value, set_tokens=set_tokens)
    if cluster is None:
        as_stats = [as_statistics(source, **options) for source in sources]
    else:  # each worker reads its own shard; the results come back in input order
        with cluster_executor(cluster) as pool:
            as_stats = list(pool.map(functools.partial(statistics_of_file, **options), inputs))
    merged = as_stats[0]
    for path, stats in zip(inputs[1:], as_stats[1:], strict=True):
        with named(path):
            merged = merged + stats
    save_statistics(merged, out_path)
    out.print(f"statistics of {merged.num_tokens} tokens from {len(inputs)} inputs -> {out_path}")


def _require_npz(path: Path, what: str) -> None:
    if path.suffix != ".npz":
        raise MoeplaceError(f"{path}: {what} are written as .npz; name the output *.npz")

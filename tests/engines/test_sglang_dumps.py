"""SGLang dumps written by SGLang's own expert distribution recorder (0.5.2 and 0.5.23) import to
exactly the routing that was recorded, token for token and document for document, or are refused.

The routing is real (the packaged gpt-oss trace, its first four layers) in a DeepSeek-shaped model:
5 hidden layers, layer 0 dense, 32 experts, top-4, 4 EP ranks with 4 redundant slots. What the
recorder is fed per rank is what SGLang's MoE layer hands it in each launch (read from SGLang's
``layers/communicator.py`` / ``layers/layer_boundary/`` and ``forward_batch_info.py``, cited in
``calibrate/importers/sglang.py``): the whole batch without an all-to-all backend; with one, the
batch padded to a multiple of the attention-TP size and ``tensor_split`` into contiguous slices, pad
rows -1 (0.5.2's eager mode leaves the padding's routing in them); under DP attention each rank's
own batch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harness import ForwardMode, forward_batch, sglang
from typer.testing import CliRunner

from moeplace.calibrate.stats_io import load_statistics
from moeplace.calibrate.trace_io import load_trace
from moeplace.cli import app
from moeplace.planner.plan import plan
from moeplace.planner.solvers import SolverOptions
from moeplace.planner.topology import Topology

pytestmark = pytest.mark.engines

HIDDEN, EP, R, K, N = 5, 4, 4, 4, 32
VERSIONS = ["0.5.23", "0.5.2"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model(real_trace, real_stats, tmp_path_factory):
    """Requests (logical ids ``[t, 4, k]`` each, real routing), and the placement SGLang serves:
    ``table`` int ``[HIDDEN, N + R]`` (dense layer 0: SGLang's trivial row) written to ``path``."""
    ids = np.asarray(real_trace.topk_ids[:, :4]).astype(np.int64)
    offsets = real_trace.doc_offsets
    requests = [ids[offsets[d] : min(offsets[d + 1], offsets[d] + 6 + 3 * d)] for d in range(8)]
    stats = real_stats
    stats = type(stats)(
        **{
            **stats.__dict__,
            "meta": type(stats.meta)(**{**stats.meta.__dict__, "layer_ids": stats.meta.layer_ids[:4]}),
            "load": stats.load[:4],
            "coact": stats.coact[:4],
            "load_resamples": stats.load_resamples[:4],
            "topk_sets": stats.topk_sets[:4],
        }
    )
    placement = plan(stats, Topology(N, EP, 1, R), "eplb", SolverOptions(), {})
    table = np.vstack([np.arange(N + R) % N, placement.physical_to_logical])
    path = tmp_path_factory.mktemp("placement") / "placement.json"
    path.write_text(json.dumps({"physical_to_logical_map": table.tolist()}))
    return requests, table, path


def physical(logical: np.ndarray, table: np.ndarray) -> torch.Tensor:
    """``[HIDDEN, t, k]`` physical slots SGLang's dispatch would use (token t takes copy t mod
    copies), -1 in the dense layer, from logical ids ``[t, 4, k]``."""
    out = np.full((HIDDEN, logical.shape[0], K), -1)
    for layer in range(1, HIDDEN):
        for token, experts in enumerate(logical[:, layer - 1]):
            for column, expert in enumerate(experts):
                slots = np.flatnonzero(table[layer] == expert)
                out[layer, token, column] = slots[token % slots.size]
    return torch.tensor(out, dtype=torch.int32)


def scattered(rows: torch.Tensor, rank: int, chunk: int, pad: str) -> torch.Tensor:
    """Rank ``rank``'s rows under TP attention with an all-to-all backend: the batch padded to
    ``chunk`` x EP rows and cut into EP contiguous slices; pad rows -1 or, ``pad="garbage"``,
    the routing of padding tokens (0.5.2 eager)."""
    tokens = rows.shape[1]
    padding = torch.randint(
        0, N + R, (HIDDEN, chunk * EP - tokens, K), generator=torch.Generator().manual_seed(rank)
    )
    padded = torch.cat([rows, padding.to(torch.int32)], dim=1)
    local = padded.tensor_split(EP, dim=1)[rank].clone()
    if pad != "garbage":
        local[:, max(0, min(tokens - rank * chunk, chunk)) :] = -1
    return local


def record_pass(recorder, pass_id, batch, rows):
    """One forward pass as SGLang's model runner drives the recorder: each MoE layer's top-k."""
    with recorder.with_forward_pass(pass_id, batch):
        for layer in range(1, HIDDEN):
            with recorder.with_current_layer(layer):
                recorder.on_select_experts(topk_ids=rows[layer].clone())


def write_dumps(version, setup, model, directory, monkeypatch, mode="per_token"):
    """Dumps of two passes (a prefill of several requests, then a decode step) in ``setup``;
    returns the documents the trace must hold, in order."""
    requests, table, path = model
    monkeypatch.setenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR", str(directory))
    a2a = "none" if setup in ("tp", "dp-gather") else "deepep"
    with sglang(
        version,
        num_hidden_layers=HIDDEN,
        num_experts=N,
        ep_size=EP,
        redundant=R,
        a2a_backend=a2a,
        recorder_mode=mode,
        chunked_prefill_size=64,
    ) as engine:
        recorders = {rank: engine.recorder(rank, str(path)) for rank in range(EP)}
        for recorder in recorders.values():
            recorder.start_record()
        if setup.startswith("dp"):  # rank r serves request r (prefill) and request 4 + r (decode); 3 idles
            expected = []
            for pass_id, offset in ((1, 0), (2, 4)):
                batches = {}
                for rank in range(EP):
                    request = requests[offset + rank][: 1 if pass_id == 2 else None]
                    batches[rank] = request if rank < 3 else request[:0]
                gathered = torch.cat([physical(batches[rank], table) for rank in range(EP)], dim=1)
                for rank, recorder in recorders.items():
                    tokens = batches[rank].shape[0]
                    mode_ = (
                        ForwardMode.IDLE
                        if not tokens
                        else (ForwardMode.EXTEND if pass_id == 1 else ForwardMode.DECODE)
                    )
                    lengths = [tokens] if pass_id == 1 and tokens else None
                    ids = list(range(100 * rank + pass_id, 100 * rank + pass_id + tokens))
                    batch = forward_batch(ids, list(range(tokens)), lengths, mode_)
                    rows = physical(batches[rank], table) if setup == "dp-a2a" else gathered[:, :tokens]
                    record_pass(recorder, pass_id, batch, rows)
                    if tokens:
                        expected.append(batches[rank])
        else:  # one batch on every rank: requests 0-2 prefilled, then one decode token of 3-5
            prefill, decode = requests[:3], [r[:1] for r in requests[3:6]]
            expected = [*prefill, np.concatenate(decode)]
            passes = [
                (1, np.concatenate(prefill), [len(r) for r in prefill], ForwardMode.EXTEND),
                (2, np.concatenate(decode), None, ForwardMode.DECODE),
            ]
            for pass_id, logical, lengths, mode_ in passes:
                rows, tokens = physical(logical, table), logical.shape[0]
                batch = forward_batch(list(range(tokens)), list(range(tokens)), lengths, mode_)
                eager = mode_ == ForwardMode.EXTEND
                chunk = -(-tokens // EP) if eager else 2  # decode: a CUDA-graph bucket of 8 rows
                pad = "garbage" if version == "0.5.2" and eager else "masked"
                for rank, recorder in recorders.items():
                    mine = rows if setup == "tp" else scattered(rows, rank, chunk, pad)
                    record_pass(recorder, pass_id, batch, mine)
        for rank in sorted(recorders, reverse=True):  # stat: rank 0 dumps last, holding every rank's sum
            recorders[rank].dump_record()
    return expected


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("setup", ["tp", "tp-a2a", "dp-a2a"])
def test_per_token_dumps_import_to_the_recorded_routing(version, setup, model, tmp_path, monkeypatch):
    expected = write_dumps(version, setup, model, tmp_path / "dumps", monkeypatch)
    dumps = sorted((tmp_path / "dumps").glob("*.pt"))
    assert len(dumps) == EP
    result = run("import", "sglang", *dumps, "--out", tmp_path / "t.npz")
    assert result.exit_code == 0, result.output
    trace = load_trace(tmp_path / "t.npz")
    assert trace.meta.layer_ids == (1, 2, 3, 4) and trace.meta.num_hidden_layers == HIDDEN
    np.testing.assert_array_equal(np.diff(trace.doc_offsets), [doc.shape[0] for doc in expected])
    np.testing.assert_array_equal(np.asarray(trace.topk_ids), np.concatenate(expected))


@pytest.mark.parametrize("version", VERSIONS)
def test_a_missing_ranks_slice_is_refused(version, model, tmp_path, monkeypatch):
    write_dumps(version, "tp-a2a", model, tmp_path / "dumps", monkeypatch)
    dumps = sorted((tmp_path / "dumps").glob("*.pt"))
    result = run("import", "sglang", *dumps[:1], *dumps[2:], "--out", tmp_path / "t.npz")
    assert result.exit_code == 2 and "pass every rank's dump" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize("version", VERSIONS)
def test_dp_attention_without_a2a_is_refused(version, model, tmp_path, monkeypatch):
    """Every DP rank's record holds the first rows of the gathered batch: DP group 0's tokens."""
    write_dumps(version, "dp-gather", model, tmp_path / "dumps", monkeypatch)
    dumps = sorted((tmp_path / "dumps").glob("*.pt"))
    result = run("import", "sglang", *dumps, "--out", tmp_path / "t.npz")
    assert result.exit_code == 2 and "cannot be undone" in result.stderr, result.output
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("setup", ["tp", "tp-a2a"])
def test_stat_dumps_count_every_token_once(version, setup, model, tmp_path, monkeypatch):
    """SGLang sums the stat counts over ranks: without an all-to-all backend each of the TP ranks
    counted every token (--tp-size undoes it); with one, each its slice. 0.5.2's eager prefill
    also counts its padding's routing, so there the prefill is given a multiple of EP tokens."""
    expected = write_dumps(version, setup, model, tmp_path / "dumps", monkeypatch, mode="stat")
    dumps = sorted((tmp_path / "dumps").glob("*.pt"))
    assert len(dumps) == 1
    backend = ["--moe-a2a-backend", "deepep"] if setup == "tp-a2a" else []
    out = tmp_path / "s.npz"
    result = run("import", "sglang-stat", *dumps, "--top-k", K, "--tp-size", EP, *backend, "--out", out)
    if version == "0.5.2" and setup == "tp-a2a":  # padding's routing counted: refused or inflated
        truth = sum(doc.shape[0] for doc in expected)
        assert result.exit_code != 0 or load_statistics(out).num_tokens > truth
        return
    assert result.exit_code == 0, result.output
    stats = load_statistics(out)
    routing = np.concatenate(expected)  # [T, 4, k]
    load = np.stack([np.bincount(routing[:, layer].ravel(), minlength=N) for layer in range(4)])
    assert stats.meta.layer_ids == (1, 2, 3, 4)
    np.testing.assert_array_equal(stats.load, load)
    assert stats.num_tokens == routing.shape[0]


def test_load_records_import_to_what_sglang_reads_from_them(tmp_path):
    """A ``logical_count`` JSON in the form ``--init-expert-location`` takes: SGLang 0.5.23's own
    ``compute_initial_expert_location_metadata`` accepts it and balances the counts ``import
    sglang-load`` reads, layer for layer (dense layer 0 included, all zero)."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5000, size=(HIDDEN, N)).astype(float)
    counts[0] = 0  # the dense layer
    path = tmp_path / "decode.json"
    path.write_text(json.dumps({"logical_count": counts.tolist()}))
    seen = []
    with sglang("0.5.23", num_hidden_layers=HIDDEN, num_experts=N, ep_size=EP, redundant=R) as engine:
        location = __import__("sglang.srt.eplb.expert_location", fromlist=["*"])
        init_by_eplb = location.ExpertLocationMetadata.init_by_eplb

        def recording(model_config, logical_count, **kwargs):
            seen.append(torch.as_tensor(logical_count))
            return init_by_eplb(model_config, logical_count, **kwargs)

        location.ExpertLocationMetadata.init_by_eplb = staticmethod(recording)
        try:
            meta = engine.metadata(0, str(path))
        finally:
            location.ExpertLocationMetadata.init_by_eplb = staticmethod(init_by_eplb)
    assert meta is not None and meta.physical_to_logical_map.shape == (HIDDEN, N + R)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"n_routed_experts": N, "num_experts_per_tok": K, "first_k_dense_replace": 1,
                                  "num_hidden_layers": HIDDEN}))  # fmt: skip
    out = tmp_path / "load.npz"
    result = run("import", "sglang-load", path, "--model-config", config, "--out", out)
    assert result.exit_code == 0, result.output
    stats = load_statistics(out)
    (sglang_counts,) = seen
    np.testing.assert_array_equal(sglang_counts.numpy()[list(stats.meta.layer_ids)], stats.workload_load[0])
    assert stats.meta.layer_ids == (1, 2, 3, 4) and not sglang_counts.numpy()[0].any()

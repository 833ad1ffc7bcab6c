"""Hostile input, round 2: outputs that would destroy inputs, sizes claimed before anything is
checked, gates on undefined figures, units, absurd layer ids, inputs that used to crash, interrupts,
messages, and quiet acceptance. Each a class, each case through the CLI with the same contract as
``test_hostile_input`` (``refused``); docs/bad-input.md lists the classes and their lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import yaml

from conftest import GOOD, make_trace, refused, run
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.stats_io import save_statistics
from moeplace.calibrate.trace_io import save_trace
from moeplace.demo import demo_trace_path


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- 1. an output that is an input, or another output ---------------------------------------------


def test_an_output_never_replaces_an_input(good, tmp_path):
    held = tmp_path / "held.npz"
    held.write_bytes((good / "trace.npz").read_bytes())
    before = digest(held)
    plan = ("plan", good / "trace.npz", "--devices", 4, "--solver", "frequency")
    refused(run(*plan, "--holdout", held, "--out", held), held, "is also an input")
    (tmp_path / "link.yaml").symlink_to(good / "p.yaml")
    refused(run("export", good / "p.yaml", "--format", "sglang", "--num-hidden-layers", 2,
                "--out", tmp_path / "link.yaml"), "link.yaml", "is also an input")  # fmt: skip
    os.link(held, tmp_path / "hard.npz")
    refused(run("split", held, "--fit-out", tmp_path / "hard.npz", "--holdout-out", tmp_path / "b.npz"),
            "hard.npz", "is also an input")  # fmt: skip
    refused(run("merge", good / "trace.npz", held, "--out", held), held, "is also an input")
    assert digest(held) == before and not (tmp_path / "b.npz").exists()


def test_two_outputs_of_one_command_are_refused(good, tmp_path):
    result = run(
        "split", good / "trace.npz", "--fit-out", tmp_path / "x.npz", "--holdout-out", tmp_path / "x.npz"
    )
    refused(result, "x.npz", "given as two outputs")
    assert not (tmp_path / "x.npz").exists()


def test_outputs_inside_an_input_directory_or_holding_an_input(good, tmp_path):
    save_trace(GOOD, tmp_path / "t.trace")
    into_input = run("import", "npz", tmp_path / "t.trace", "--out", tmp_path / "t.trace" / "x.npz")
    refused(into_input, "x.npz", "lies inside the input")
    (tmp_path / "x").mkdir()
    save_trace(GOOD, tmp_path / "x" / "t.npz")
    refused(run("import", "npz", tmp_path / "x" / "t.npz", "--out", tmp_path / "x"), "x", "holds the input")


@pytest.mark.parametrize("command", ["compare", "diagnose"])
def test_an_output_directory_that_is_a_file_fails_before_any_work(good, tmp_path, command):
    (tmp_path / "out").write_text("mine")
    refused(run(command, good / "trace.npz", "--out", tmp_path / "out"), "out", "not a directory")
    assert (tmp_path / "out").read_text() == "mine"


# --- 2. sizes claimed before anything is checked --------------------------------------------------


def test_an_npy_header_claiming_terabytes_is_refused_without_allocating(tmp_path):
    save_trace(GOOD, tmp_path / "t.trace")
    npy = tmp_path / "t.trace" / "doc_offsets.npy"
    header = {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)}
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
    refused(run("stats", tmp_path / "t.trace"), "t.trace", "claims (1099511627776,)")


def test_a_decompression_bomb_in_an_npz_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez(path, doc_offsets=GOOD.doc_offsets, meta_json=np.array(json.dumps(GOOD.meta.to_dict())))
    with (
        zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z,
        z.open("topk_ids.npy", "w", force_zip64=True) as f,
    ):
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|i1", "fortran_order": False, "shape": (70 << 20,)}
        )
        block = bytes(1 << 20)
        for _ in range(70):
            f.write(block)
    assert path.stat().st_size < 1 << 20
    refused(run("stats", path), "bomb.npz", "decompression bomb")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--redundant-slots", 10**12), "two copies of one expert"),
        (("--nodes", 10**12), "node"),
    ],
)
def test_absurd_sizes_in_options_are_refused(good, tmp_path, args, problem):
    refused(
        run("plan", good / "trace.npz", "--devices", 4, *args, "--out", tmp_path / "o.yaml"), None, problem
    )


@pytest.mark.parametrize("option", ["--devices", "--redundant-slots"])
def test_ranges_that_name_billions_of_values_are_refused(good, tmp_path, option):
    result = run("compare", good / "trace.npz", option, "0-100000000000", "--out", tmp_path / "c")
    refused(result, None, "names more than")


def test_absurd_sizes_in_metadata_are_refused(tmp_path):
    ids = np.asarray(GOOD.topk_ids)
    for claim, problem in ((2**40, "num_experts"), (-3, "num_experts")):
        meta = {**GOOD.meta.to_dict(), "num_experts": claim}
        np.savez(
            tmp_path / "m.npz",
            topk_ids=ids,
            doc_offsets=GOOD.doc_offsets,
            meta_json=np.array(json.dumps(meta)),
        )
        refused(run("stats", tmp_path / "m.npz"), "m.npz", problem)


def test_a_tensor_claiming_more_than_it_stores_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    huge = torch.zeros(3, 1).expand(3, 1 << 40)  # a view: 3 stored values claiming 3 x 2^40
    torch.save({"records": [], "last_physical_to_logical_map": huge}, tmp_path / "d.pt")
    refused(run("import", "sglang", tmp_path / "d.pt", "--out", tmp_path / "o.npz"), "d.pt", "but stores 3")


# --- 3. gates on undefined figures ----------------------------------------------------------------


@pytest.mark.parametrize(
    "gate", [("--max-load-ratio", "nan"), ("--min-reduction", "nan"), ("--max-load-ratio", "inf")]
)
def test_a_gate_of_nan_or_inf_is_refused(good, gate):
    result = run("validate", good / "p.yaml", good / "trace.npz", *gate)
    assert result.exit_code == 2 and gate[0] in result.output


def test_compare_refuses_a_nan_tolerance_and_a_split_with_no_tokens_on_one_side(good, tmp_path):
    refused(
        run("compare", good / "trace.npz", "--load-tolerance", "nan", "--out", tmp_path / "c"),
        None,
        "fraction",
    )
    ids = np.asarray(GOOD.topk_ids)[:10]
    trace = make_trace(ids, [10, 0, 0, 0], 16)  # three empty documents: one split side can hold no tokens
    save_trace(trace, tmp_path / "t.npz")
    result = run(
        "split",
        tmp_path / "t.npz",
        "--seed",
        1,
        "--fit-out",
        tmp_path / "a.npz",
        "--holdout-out",
        tmp_path / "b.npz",
    )
    refused(result, "t.npz", "hold no tokens")


def test_gate_failures_read_an_undefined_figure_as_a_failure():
    from moeplace.validators.report import gate_failures

    def validation(load, reduction):
        return NS(score=NS(headline=NS(max_mean_load=load)), reduction=reduction, baseline_name="frequency")

    assert gate_failures(validation(float("nan"), 0.2), 1.15, None)
    assert gate_failures(validation(1.0, float("nan")), None, 0.1)
    assert not gate_failures(validation(1.0, 0.2), 1.15, 0.1)


# --- 4. units -------------------------------------------------------------------------------------


def test_values_meant_as_percent_are_refused_saying_the_unit(good, tmp_path):
    result = run(
        "plan", good / "trace.npz", "--devices", 4, "--load-tolerance", 10, "--out", tmp_path / "o.yaml"
    )
    assert result.exit_code == 2 and "0.1 = 10%" in result.output and not (tmp_path / "o.yaml").exists()
    result = run("validate", good / "p.yaml", good / "trace.npz", "--min-reduction", 10)
    assert result.exit_code == 2 and "0.1 = 10%" in result.output
    refused(
        run("validate", good / "p.yaml", good / "trace.npz", "--max-load-ratio", 115), None, "can never fail"
    )


# --- 5. negative and absurd layer ids -------------------------------------------------------------


def test_negative_and_absurd_layer_ids_are_refused_where_they_enter(good, tmp_path):
    meta = {**GOOD.meta.to_dict(), "layer_ids": [-1, 0]}
    np.savez(tmp_path / "neg.npz", topk_ids=np.asarray(GOOD.topk_ids), doc_offsets=GOOD.doc_offsets,
             meta_json=np.array(json.dumps(meta)))  # fmt: skip
    refused(run("stats", tmp_path / "neg.npz"), "neg.npz", "layer_ids")
    (tmp_path / "v.jsonl").write_text(json.dumps({"routed_experts": [[[1, 2], [3, 4]]]}) + "\n")
    vllm = ("import", "vllm", tmp_path / "v.jsonl", "--num-experts", 16, "--out", tmp_path / "o.npz")
    refused(run(*vllm, "--layer-ids", "-1,0"), None, "--layer-ids")
    refused(run(*vllm, "--layer-ids", f"{2**70},{2**70 + 1}"), None, "--layer-ids")
    for layer in (-1, 2**70):
        doc = yaml.safe_load((good / "p.yaml").read_text())
        doc["layers"][0]["layer"] = layer
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
        refused(run("export", tmp_path / "p.yaml", "--format", "sglang", "--num-hidden-layers", 4,
                    "--out", tmp_path / "o.json"), "p.yaml", "layer indices")  # fmt: skip
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o.npz").exists()


# --- 6. inputs that used to end in a traceback ----------------------------------------------------


@pytest.mark.slow
def test_deeply_nested_json_and_yaml_are_one_line(good, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    np.savez(tmp_path / "deep.npz", topk_ids=np.asarray(GOOD.topk_ids), doc_offsets=GOOD.doc_offsets,
             meta_json=np.array(deep))  # fmt: skip
    refused(run("stats", tmp_path / "deep.npz"), "deep.npz", "nests too deeply")
    (tmp_path / "deep.yaml").write_text("a: " + deep + "\n")
    refused(run("validate", tmp_path / "deep.yaml", good / "trace.npz"), "deep.yaml")
    (tmp_path / "perm.json").write_text(deep)
    (tmp_path / "v.jsonl").write_text(deep + "\n")
    refused(
        run("import", "vllm", tmp_path / "v.jsonl", "--num-experts", 4, "--out", tmp_path / "o.npz"),
        "v.jsonl",
    )


def test_huge_integers_are_one_line(good, tmp_path):
    doc = yaml.safe_load((good / "p.yaml").read_text())
    doc["layers"][0]["expert_to_device"][0] = 2**70
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    refused(run("validate", tmp_path / "p.yaml", good / "trace.npz"), "p.yaml", "64-bit")
    result = run("plan", good / "trace.npz", "--devices", 4, "--seed", 2**70, "--out", tmp_path / "o.yaml")
    assert result.exit_code == 2 and "--seed" in result.output


@pytest.mark.parametrize(
    ("ids", "lengths", "problem"),
    [
        (np.full((8, 2, 4), -1), [8], "all padding"),
        (np.zeros((0, 2, 4)), [0], "no tokens"),
    ],
)
def test_degenerate_traces_are_refused(tmp_path, ids, lengths, problem):
    offsets = np.array([0, *np.cumsum(lengths)])
    np.savez(tmp_path / "t.npz", topk_ids=ids.astype(np.int16), doc_offsets=offsets,
             meta_json=np.array(json.dumps(GOOD.meta.to_dict())))  # fmt: skip
    refused(run("plan", tmp_path / "t.npz", "--devices", 4, "--out", tmp_path / "o.yaml"), "t.npz", problem)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda z: z.update(set_offsets=z["set_offsets"][::-1].copy()), "set_offsets"),
        (lambda z: z.update(sets=np.full_like(z["sets"], 999)), "experts in"),
        (lambda z: z.update(load=-z["load"]), "negative"),
        (lambda z: z.update(load=z["load"].astype(float) * np.nan), "integer counts"),
        (lambda z: z.update(coact=np.swapaxes(z["coact"] + np.eye(16, dtype=np.int64), 1, 2)), "symmetric"),
        (lambda z: z.update(stats_meta_json=_with_tokens(z["stats_meta_json"], 4)), "more activations than"),
    ],
)
def test_statistics_whose_arrays_contradict_themselves(tmp_path, change, problem):
    """Offsets that fall, experts out of range, negative or non-integer counts, a coact matrix that is
    not symmetric, a token count the load cannot fit in."""
    save_statistics(compute_statistics(GOOD), tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        arrays = dict(z)
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    refused(
        run("plan", tmp_path / "bad.npz", "--devices", 4, "--out", tmp_path / "o.yaml"), "bad.npz", problem
    )


def test_an_output_whose_folder_cannot_exist_fails_before_work(good, tmp_path):
    (tmp_path / "file").write_text("x")
    refused(
        run("plan", good / "trace.npz", "--devices", 4, "--out", tmp_path / "file" / "p.yaml"),
        "p.yaml",
        "folder",
    )


# --- 7. interrupts --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_plan_stops_at_once_and_leaves_nothing(tmp_path, sig):
    command = [sys.executable, "-m", "moeplace.cli", "plan", str(demo_trace_path()), "--devices", "8",
               "--solver", "refine", "--search-steps", "100000", "--jobs", "2",
               "--out", str(tmp_path / "p.yaml")]  # fmt: skip
    # a shell's background job ignores SIGINT, and so would the child of a suite run with `&`
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for _ in range(300):  # wait until the pool's workers run (fork server + 2 workers in the session)
        members = subprocess.run(["ps", "-o", "pid=", "-g", str(process.pid)], capture_output=True, text=True)
        if len(members.stdout.split()) >= 4 or process.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(1)  # the workers are solving layers
    assert process.poll() is None, process.stderr.read()
    os.kill(process.pid, sig)
    began = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - began < 5, "took too long to stop"
    assert process.returncode == 128 + sig and stderr.strip().splitlines() == [
        "error: interrupted; no output was written"
    ]
    for _ in range(50):  # no worker, fork server or tracker left in its session within 5 s
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("processes of the interrupted run were still alive 5 s later")
    assert list(tmp_path.iterdir()) == []


# --- 8. messages ----------------------------------------------------------------------------------


def test_a_file_name_with_a_newline_or_an_escape_stays_one_line(tmp_path):
    name = tmp_path / "bad\nname\x1b[31m.npz"
    name.write_bytes(b"not a zip")
    line = refused(run("stats", name))
    assert "\\n" in line and "\\x1b" in line


def test_errors_in_vllm_lines_name_the_file_and_the_line(tmp_path):
    (tmp_path / "v.jsonl").write_text('{"routed_experts": [[[1, 2]]]}\n{"routed_experts": "%%%"}\n')
    refused(run("import", "vllm", tmp_path / "v.jsonl", "--num-experts", 4, "--out", tmp_path / "o.npz"),
            "v.jsonl", "line 2")  # fmt: skip


def test_a_broken_permutation_is_blamed_not_the_checkpoint(good, tmp_path):
    doc = json.loads((good / "perm.json").read_text())
    doc["layers"][0]["new_to_old"][0] = 1.0
    (tmp_path / "perm.json").write_text(json.dumps(doc))
    (tmp_path / "ck").mkdir()
    permute = ("permute-checkpoint", tmp_path / "ck", tmp_path / "out")
    refused(run(*permute, "--placement", tmp_path / "perm.json"),
            "perm.json", "new_to_old")  # fmt: skip


# --- 9. determinism and quiet acceptance ----------------------------------------------------------


def test_a_pt_export_is_the_same_bytes_every_time(good, tmp_path):
    pytest.importorskip("torch")
    for name in ("a.pt", "b.pt"):
        result = run(
            "export",
            good / "p.yaml",
            "--format",
            "sglang",
            "--num-hidden-layers",
            2,
            "--out",
            tmp_path / name,
        )
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_one_file_twice_and_a_top_k_past_the_experts_are_refused(good, tmp_path):
    refused(
        run("import", "npz", good / "trace.npz", good / "trace.npz", "--out", tmp_path / "o.npz"),
        None,
        "twice",
    )
    torch = pytest.importorskip("torch")
    torch.save({"logical_count": torch.ones(2, 3, 16, dtype=torch.int64)}, tmp_path / "stat.pt")
    result = run("import", "sglang-stat", tmp_path / "stat.pt", "--top-k", 1000, "--out", tmp_path / "s.npz")
    assert result.exit_code == 2 and not (tmp_path / "s.npz").exists()


def test_negative_request_lengths_in_an_sglang_dump_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    record = {"forward_pass_id": 1, "rank": 0, "input_ids": [1, 2], "positions": [0, 1],
              "extend_seq_lens": [3, -1],
              "topk_ids_of_layer": torch.zeros(2, 2, 8, dtype=torch.int32)}  # fmt: skip
    torch.save(
        {"records": [record], "last_physical_to_logical_map": torch.arange(8).repeat(2, 1)}, tmp_path / "d.pt"
    )
    refused(
        run("import", "sglang", tmp_path / "d.pt", "--out", tmp_path / "o.npz"),
        "d.pt",
        "extend_seq_lens must be lengths >= 1",
    )


@pytest.mark.parametrize("command", ["stats", "validate", "plan", "import"])
def test_a_pipe_as_input_is_refused_not_waited_on(good, tmp_path, command):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    args = {
        "stats": ("stats", fifo),
        "validate": ("validate", fifo, good / "trace.npz"),
        "plan": ("plan", fifo, "--devices", 4, "--out", tmp_path / "o.yaml"),
        "import": ("import", "npz", fifo, "--out", tmp_path / "o.npz"),
    }[command]
    refused(run(*args), "pipe.npz", "not a regular file")


def test_user_text_reaching_stdout_is_escaped(tmp_path):
    meta = {**GOOD.meta.to_dict(), "model": "evil\x1b]0;title\x07\x1b[2J\u202emodel"}
    np.savez(tmp_path / "t.npz", topk_ids=np.asarray(GOOD.topk_ids), doc_offsets=GOOD.doc_offsets,
             meta_json=np.array(json.dumps(meta)))  # fmt: skip
    result = run("stats", tmp_path / "t.npz")
    assert result.exit_code == 0 and "\x1b" not in result.output and "\u202e" not in result.output
    assert "\\x1b" in result.output and "\\u202e" in result.output


def test_a_failed_compare_leaves_no_folder_and_a_demo_refuses_someone_elses(good, tmp_path, monkeypatch):
    from moeplace.validators import compare

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compare, "write_text", lambda path, text: disk_full())
    result = run("compare", good / "trace.npz", "--devices", 4, "--solvers", "frequency", "--jobs", 1,
                 "--out", tmp_path / "c")  # fmt: skip
    assert result.exit_code != 0 and not (tmp_path / "c").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused(run("demo", "--out", tmp_path / "mine"), "mine", "not a demo's output")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("option", ["--groups", "--devices", "--capacities", "--sch-cache"])
def test_diagnose_settings_past_the_experts_are_refused(good, tmp_path, option):
    refused(
        run("diagnose", good / "trace.npz", option, 10**12, "--out", tmp_path / "d"), None, "must be in 0..16"
    )
    assert not (tmp_path / "d").exists()


def test_sglang_records_that_contradict_each_other_are_refused(tmp_path):
    torch = pytest.importorskip("torch")

    def record(rank, topk):
        return {"forward_pass_id": 1, "rank": rank, "input_ids": [1, 2], "positions": [0, 1],
                "extend_seq_lens": [2], "topk_ids_of_layer": topk}  # fmt: skip

    table = torch.arange(8).repeat(2, 1)
    ones, twos = torch.full((2, 2, 8), -1, dtype=torch.int32), torch.full((2, 2, 8), -1, dtype=torch.int32)
    ones[1, :, :2], twos[1, :, :2] = torch.tensor([0, 1]), torch.tensor([2, 3])
    for name, records, problem in (
        ("neg.pt", [record(-3, ones)], "rank -3 is negative"),
        ("twice.pt", [record(0, ones), record(0, ones)], "record 1 repeats record 0"),
    ):
        torch.save({"records": records, "last_physical_to_logical_map": table}, tmp_path / name)
        refused(run("import", "sglang", tmp_path / name, "--out", tmp_path / "o.npz"), name, problem)
    for name, topk in (("a.pt", ones), ("b.pt", twos)):  # two files, one rank, different routing
        torch.save({"records": [record(0, topk)], "last_physical_to_logical_map": table}, tmp_path / name)
    result = run("import", "sglang", tmp_path / "a.pt", tmp_path / "b.pt", "--out", tmp_path / "o.npz")
    refused(result, "b.pt", "two different records of rank 0")


def _with_tokens(header: np.ndarray, tokens: int) -> np.ndarray:
    return np.array(json.dumps({**json.loads(str(header)), "num_tokens": tokens}))

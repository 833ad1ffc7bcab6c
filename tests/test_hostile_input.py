"""Hostile and broken input through the CLI, one test per bad-input class.

The contract checked every time (``refused``): exit code 2, one line on stderr naming the file and
the problem, no traceback, and no output written. docs/bad-input.md lists the same classes.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import yaml

from conftest import GOOD, make_trace, random_trace, refused, run
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.stats_io import save_statistics
from moeplace.calibrate.trace_io import save_trace

# --- Missing, empty, truncated and corrupt files of every format read ---------------------------------


def _sglang_dump(path):
    torch = pytest.importorskip("torch")

    ids = torch.tensor(np.argsort(np.random.default_rng(0).random((2, 6, 16)), axis=-1)[..., :4])
    record = {
        "forward_pass_id": 1,
        "rank": 0,
        "input_ids": list(range(6)),
        "positions": list(range(6)),
        "extend_seq_lens": [6],
        "forward_mode": 1,
        "topk_ids_of_layer": ids,
        "misc_objects": [],
    }
    torch.save({"records": [record], "last_physical_to_logical_map": torch.arange(16).repeat(2, 1)}, path)


def _vllm_jsonl(path):
    rows = np.argsort(np.random.default_rng(0).random((5, 2, 16)), axis=-1)[..., :4]
    path.write_text(json.dumps({"routed_experts": rows.tolist()}) + "\n")


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def _checkpoint(path):
    from safetensors.numpy import save_file

    path.mkdir()
    save_file({"model.embed_tokens.weight": np.zeros((4, 4), np.float32)}, str(path / "model.safetensors"))
    return path / "model.safetensors"


def _plan_args(work, path):
    return ("plan", path, "--devices", 4, "--out", work / "o.yaml")


# format -> (suffix, writes a valid input at the path and returns the file to damage, command reading it)
FORMATS = {
    "trace .npz": (".npz", lambda w, p: save_trace(GOOD, p) or p, _plan_args),
    "trace directory": (".trace", lambda w, p: save_trace(GOOD, p) or p / "topk_ids.npy", _plan_args),
    "statistics .npz": (".npz", lambda w, p: save_statistics(compute_statistics(GOOD), p) or p, _plan_args),
    "placement YAML": (
        ".yaml",
        lambda w, p: _copy(w.parent / "p.yaml", p),
        lambda w, p: ("validate", p, w.parent / "trace.npz"),
    ),
    "SGLang .pt dump": (
        ".pt",
        lambda w, p: _sglang_dump(p) or p,
        lambda w, p: ("import", "sglang", p, "--out", w / "o.npz"),
    ),
    "vLLM JSONL": (
        ".jsonl",
        lambda w, p: _vllm_jsonl(p) or p,
        lambda w, p: ("import", "vllm", p, "--num-experts", 16, "--out", w / "o.npz"),
    ),
    "permutation JSON": (
        ".json",
        lambda w, p: _checkpoint(w / "ckpt") and _copy(w.parent / "perm.json", p),
        lambda w, p: ("permute-checkpoint", w / "ckpt", w / "o.ckpt", "--placement", p),
    ),
    "safetensors checkpoint": (
        ".ckpt",
        lambda w, p: _checkpoint(p),
        lambda w, p: ("permute-checkpoint", p, w / "o.ckpt", "--placement", w.parent / "perm.json"),
    ),
}
DAMAGE = {
    "missing": None,
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "corrupt": lambda data: bytes(b ^ 0x5A for b in data[:64]) + data[64:],
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("kind", list(FORMATS))
def test_unreadable_files_of_every_format(good, tmp_path, kind, damage):
    suffix, write, command = FORMATS[kind]
    work = good / f"{kind}-{damage}".replace(" ", "_").replace(".", "")
    work.mkdir()
    path = work / f"input{suffix}"
    damaged = write(work, path)
    if DAMAGE[damage] is None:
        damaged.unlink()
    else:
        damaged.write_bytes(DAMAGE[damage](damaged.read_bytes()))
    refused(run(*command(work, path)), damaged)
    assert not any(p.name.startswith("o.") for p in work.iterdir())


# --- Wrong contents: shapes, dtypes, ids, duplicates, metadata ---------------------------------------


def _npz(path, **change):
    arrays = {
        "topk_ids": np.asarray(GOOD.topk_ids),
        "doc_offsets": GOOD.doc_offsets,
        "doc_labels": GOOD.doc_labels,
        "meta_json": np.array(json.dumps(GOOD.meta.to_dict())),
    }
    meta = change.pop("meta", None)
    if meta:
        arrays["meta_json"] = np.array(json.dumps(GOOD.meta.to_dict() | meta))
    np.savez(path, **(arrays | change))
    return path


def _ids(change):
    ids = np.asarray(GOOD.topk_ids).astype(np.int32)
    change(ids)
    return ids


def _set(index, value):
    return lambda ids: ids.__setitem__(index, value)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"topk_ids": np.asarray(GOOD.topk_ids)[:, 0, :]}, "shape"),  # [T, k]: a layer axis lost
        ({"topk_ids": np.asarray(GOOD.topk_ids).astype(np.float32)}, "dtype"),
        ({"doc_offsets": GOOD.doc_offsets.astype(np.float64)}, "doc_offsets"),
        ({"topk_ids": _ids(_set((5, 1, 2), 16))}, "token 5 has expert id 16, outside [0, 16)"),
        ({"topk_ids": _ids(_set((7, 0, 0), -2))}, "token 7 has expert id -2"),
        ({"topk_ids": _ids(_set((9, 1, 3), 40000))}, "outside int16"),  # would wrap in a cast
        (
            {"topk_ids": _ids(lambda ids: ids.__setitem__((3, 0, 1), ids[3, 0, 0]))},
            "token 3 selects one expert twice",
        ),
        ({"meta": {"top_k": 3}}, "4 slots per token but top_k=3"),
        ({"meta": {"layer_ids": [0, 1, 2]}}, "2 layers but metadata lists 3"),
        ({"meta": {"num_experts": 8}}, "outside [0, 8)"),
        ({"meta": {"num_experts": "16"}}, "num_experts must be integers"),
        ({"doc_offsets": GOOD.doc_offsets[:-1]}, "doc_offsets must rise from 0 to the token count 400"),
        ({"doc_labels": GOOD.doc_labels[:3]}, "3 document labels for 8 documents"),
        ({"meta_json": np.array("{not json")}, "meta_json is not valid JSON"),
    ],
)
def test_trace_contents_that_contradict_themselves(tmp_path, change, problem):
    path = _npz(tmp_path / "bad.npz", **change)
    refused(run("plan", path, "--devices", 4, "--out", tmp_path / "o.yaml"), path, problem)
    assert not (tmp_path / "o.yaml").exists()


def test_padding_marker_is_not_an_error(tmp_path):
    path = _npz(tmp_path / "padded.npz", topk_ids=_ids(_set((0, 0, 3), -1)))
    assert run("plan", path, "--devices", 4, "--out", tmp_path / "o.yaml").exit_code == 0


def test_trace_directory_header_that_contradicts_its_arrays(tmp_path):
    save_trace(GOOD, tmp_path / "t")
    header = json.loads((tmp_path / "t" / "meta.json").read_text())
    (tmp_path / "t" / "meta.json").write_text(json.dumps(header | {"num_tokens": 401}))
    refused(run("stats", tmp_path / "t"), tmp_path / "t", "meta.json says 401 tokens, topk_ids.npy holds 400")


# --- Calibration and held-out traces from different models -------------------------------------------


OTHER_MODELS = {
    "experts": random_trace(seed=1, experts=32),
    "top-k": random_trace(seed=1, top_k=2),
    "layers": random_trace(seed=1, layers=3),
}


@pytest.mark.slow
@pytest.mark.parametrize("differs", list(OTHER_MODELS))
def test_traces_of_different_models_are_not_mixed(good, tmp_path, differs):
    other = tmp_path / "other.npz"
    save_trace(OTHER_MODELS[differs], other)
    refused(run("validate", good / "p.yaml", other), other)
    refused(
        run("plan", good / "trace.npz", "--devices", 4, "--holdout", other, "--out", tmp_path / "o.yaml"),
        other,
    )
    refused(run("validate", good / "p.yaml", good / "trace.npz", "--fit", other), other)
    refused(run("merge", good / "trace.npz", other, "--out", tmp_path / "o.npz"), other)
    assert not list(tmp_path.glob("o.*"))


# --- Device counts and load tolerances no placement can meet ------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (("--devices", 3), "--devices 3 does not divide"),
        (("--devices", 32), "--devices 32 exceeds the 16 experts"),
        (("--devices", 0), "--devices must be at least 1"),
        (("--devices", -4), "--devices must be"),
        (("--devices", 4, "--redundant-slots", 2), "do not split into equal slots per device"),
        (("--devices", 4, "--nodes", 3), "--nodes 3 must be at least 1 and divide"),
        (("--devices", 2, "--redundant-slots", 18), "two copies of one expert"),  # 17 slots, 16 experts
    ],
)
def test_device_counts_that_cannot_work(good, tmp_path, options, problem):
    refused(run("plan", good / "trace.npz", *options, "--out", tmp_path / "o.yaml"), None, problem)
    refused(
        run("compare", good / "trace.npz", *options, "--solvers", "frequency", "--out", tmp_path / "o"),
        None,
        problem,
    )
    assert not list(tmp_path.iterdir())


def test_a_load_tolerance_below_the_balance_floor_is_refused(tmp_path):
    # expert 0 on every token: its device alone carries T of the mean 4T / 8, twice the mean
    rest = 1 + np.argsort(np.random.default_rng(3).random((400, 1, 15)), axis=-1)[..., :3]
    path = tmp_path / "skewed.npz"
    save_trace(make_trace(np.concatenate([np.zeros_like(rest[..., :1]), rest], -1), [100] * 4, 16), path)
    plan = ("plan", path, "--devices", 8, "--solver", "greedy-capped", "--out", tmp_path / "o.yaml")
    line = refused(run(*plan, "--load-tolerance", 0.1), path, "load tolerance 0.1 cannot be met at D=8")
    assert "2.000 x the mean device load (its balance floor" in line and "load tolerance >= 1.000" in line
    ok = run(*plan, "--load-tolerance", 1.0)
    assert ok.exit_code == 0, ok.output


# --- Placement files that are not what they claim ------------------------------------------------------


def test_a_placement_with_two_copies_of_an_expert_on_one_device(tmp_path):
    """Engines keep one copy of an expert per device (tests/engines shows what they do otherwise)."""
    trace = random_trace(experts=16, top_k=2, layers=1)
    save_trace(trace, tmp_path / "t.npz")
    ok = run("plan", tmp_path / "t.npz", "--devices", 4, "--redundant-slots", 4, "--solver", "eplb",
             "--out", tmp_path / "p.yaml")  # fmt: skip
    assert ok.exit_code == 0, ok.output
    doc = yaml.safe_load((tmp_path / "p.yaml").read_text())
    slots = doc["layers"][0]["physical_to_logical"]  # 20 slots, 5 a device
    twin = next(e for e in slots if slots.count(e) > 1)
    first, second = (i for i, e in enumerate(slots) if e == twin)
    beside = next(q for q in range(first // 5 * 5, first // 5 * 5 + 5) if q != first)
    slots[beside], slots[second] = slots[second], slots[beside]  # twin's second copy beside its first
    doc["layers"][0]["expert_to_device"] = [slots.index(e) // 5 for e in range(16)]
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused(run("validate", path, tmp_path / "t.npz"), path, "copies of expert")
    refused(run("export", path, "--format", "vllm-ascend", "--out", tmp_path / "o.json"), path, "copies")
    assert not (tmp_path / "o.json").exists()


def _first_layer(key, change):
    return lambda doc: change(doc["layers"][0][key])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_first_layer("expert_to_device", lambda m: m.pop()), "15 entries"),  # an expert missing
        (_first_layer("expert_to_device", lambda m: m.append(0)), "17 entries"),
        (_first_layer("expert_to_device", lambda m: m.__setitem__(0, 4)), "outside"),
        (_first_layer("expert_to_device", lambda m: m.__setitem__(0, -1)), "outside"),
        (_first_layer("expert_to_device", lambda m: m.__setitem__(0, (m[0] + 1) % 4)), "experts, need 4"),
        (lambda doc: doc["layers"].__setitem__(1, dict(doc["layers"][0])), "repeat"),  # layer twice
        (lambda doc: doc.update(version=7), "schema version 7"),
        (lambda doc: doc.update(num_devices="4"), "num_devices"),
        (lambda doc: doc.update(format="sglang"), "not a moeplace-placement"),
    ],
)
def test_placement_files_with_a_missing_duplicated_or_out_of_range_expert(good, tmp_path, change, problem):
    doc = yaml.safe_load((good / "p.yaml").read_text())
    change(doc)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused(run("validate", path, good / "trace.npz"), path, problem)
    refused(
        run("export", path, "--format", "sglang", "--num-hidden-layers", 2, "--out", tmp_path / "o.json"),
        path,
    )
    assert not (tmp_path / "o.json").exists()


def test_placement_with_a_wrong_layer_count_for_the_trace(good, tmp_path):
    doc = yaml.safe_load((good / "p.yaml").read_text())
    doc["layers"].pop()
    path = tmp_path / "one-layer.yaml"
    path.write_text(yaml.safe_dump(doc))
    line = refused(run("validate", path, good / "trace.npz"), good / "trace.npz")
    assert "layer" in line
    line = refused(
        run(
            "export",
            good / "p.yaml",
            "--format",
            "sglang",
            "--num-hidden-layers",
            1,
            "--out",
            tmp_path / "o.json",
        )
    )
    assert "num-hidden-layers" in line or "hidden" in line


# --- Engine dumps, pickles ---------------------------------------------------------------------------


def test_engine_dump_with_an_inconsistent_physical_to_logical_map(tmp_path):
    torch = pytest.importorskip("torch")

    _sglang_dump(tmp_path / "dump.pt")
    dump = torch.load(tmp_path / "dump.pt", weights_only=True)
    dump["last_physical_to_logical_map"][1, 3] = 2  # expert 3 of layer 1 gone, expert 2 twice
    torch.save(dump, tmp_path / "dump.pt")
    line = refused(run("import", "sglang", tmp_path / "dump.pt", "--out", tmp_path / "o.npz"), "dump.pt")
    assert "inconsistent: layer 1 gives logical expert 3 no physical slot" in line
    assert not (tmp_path / "o.npz").exists()


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_bearing_files_are_refused_saying_why(good, tmp_path):
    torch = pytest.importorskip("torch")

    np.savez(
        tmp_path / "trace.npz",
        topk_ids=np.array([Exploit()], dtype=object),
        doc_offsets=np.array([0, 1]),
        meta_json=np.array("{}"),
    )
    np.save(tmp_path / "topk.npy", np.array([Exploit()], dtype=object), allow_pickle=True)
    save_trace(GOOD, tmp_path / "t.trace")
    (tmp_path / "t.trace" / "topk_ids.npy").write_bytes((tmp_path / "topk.npy").read_bytes())
    (tmp_path / "stats.npz").write_bytes(pickle.dumps(Exploit()))
    torch.save({"records": [], "payload": Exploit()}, tmp_path / "dump.pt")
    (tmp_path / "p.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    cases = [
        (
            ("plan", tmp_path / "trace.npz", "--devices", 4, "--out", tmp_path / "o.yaml"),
            "trace.npz",
            "unpickle",
        ),
        (
            ("plan", tmp_path / "t.trace", "--devices", 4, "--out", tmp_path / "o.yaml"),
            "topk_ids.npy",
            "refusing to unpickle",
        ),
        (("stats", tmp_path / "stats.npz"), "stats.npz", None),
        (
            ("import", "sglang", tmp_path / "dump.pt", "--out", tmp_path / "o.npz"),
            "dump.pt",
            "not a safe torch file",
        ),
        (("validate", tmp_path / "p.yaml", good / "trace.npz"), "p.yaml", "not valid YAML"),
    ]
    for args, name, problem in cases:
        result = run(*args)
        refused(result, name, problem)
        assert "never run" not in result.output and "pwned" not in result.output
    assert not list(tmp_path.glob("o.*"))


# --- Outputs: atomic, never half-written -------------------------------------------------------------


def test_a_failing_run_leaves_the_earlier_output_intact(good, tmp_path):
    out = tmp_path / "p.yaml"
    out.write_bytes((good / "p.yaml").read_bytes())
    save_trace(OTHER_MODELS["experts"], tmp_path / "other.npz")
    plan = ("plan", good / "trace.npz", "--devices", 4, "--solver", "greedy-capped", "--out", out)
    refused(run(*plan, "--holdout", tmp_path / "other.npz"), "other.npz")  # fails after solving
    assert out.read_bytes() == (good / "p.yaml").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.npz", "p.yaml"]


def test_an_output_path_that_is_a_directory(good, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    refused(run("plan", good / "trace.npz", "--devices", 4, "--out", tmp_path / "taken"), "taken")
    refused(run("export", good / "p.yaml", "--format", "permutation", "--out", tmp_path / "taken"), "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


KILL_MID_WRITE = """
import os, pathlib, signal, sys
from moeplace.cli import app

def write_half_then_die(self, data):  # the placement writer's one write: half of it, then SIGKILL
    with open(self, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

pathlib.Path.write_bytes = write_half_then_die
app(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_plan_killed_mid_write_leaves_the_previous_placement_file(good, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "p.yaml"
    out.write_bytes((good / "p.yaml").read_bytes())
    args = ["plan", str(good / "trace.npz"), "--devices", "4", "--solver", "greedy-capped", "--out", str(out)]
    killed = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, *args], capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()
    assert out.read_bytes() == (good / "p.yaml").read_bytes()
    (partial,) = tmp_path.glob(".p.yaml.*.tmp")  # the half-written new file, never renamed over it
    finished = subprocess.run([sys.executable, "-m", "moeplace.cli", *args], capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()
    new = out.read_bytes()  # what the killed run was writing: plans are deterministic
    assert yaml.safe_load(new)["solver"] == "greedy-capped"
    assert partial.read_bytes() == new[: len(new) // 2]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["plan", "t.npz", "--devices", "4", "--resamples", "99", "--out", "o.yaml"], "'--resamples'"),
        (["plan", "t.npz", "--devices", "four", "--out", "o.yaml"], "'--devices'"),
        (["plan", "t.npz", "--out", "o.yaml"], "--devices is required"),
        (["bogus"], "No such command 'bogus'"),
    ],
)
def test_usage_errors_of_the_console_script_are_one_line(tmp_path, monkeypatch, capsys, args, problem):
    from moeplace.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("error: ") and problem in error
    assert not list(tmp_path.iterdir())

import itertools
import json
import pickle

import numpy as np
import pytest

from conftest import make_trace, random_trace
from moeplace.calibrate.trace import release_pages
from moeplace.calibrate.trace_io import load_trace, save_trace
from moeplace.errors import MoeplaceError


def assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a.topk_ids), np.asarray(b.topk_ids))
    np.testing.assert_array_equal(a.doc_offsets, b.doc_offsets)
    np.testing.assert_array_equal(a.doc_labels, b.doc_labels)
    assert a.meta == b.meta


@pytest.mark.parametrize("name", ["t.npz", "t.trace"])
def test_round_trip_both_formats(tmp_path, name):
    trace = random_trace()
    save_trace(trace, tmp_path / name)
    loaded = load_trace(tmp_path / name)
    assert_same(trace, loaded)
    assert loaded.fingerprint() == trace.fingerprint()


def test_directory_format_is_memory_mapped_and_versioned(tmp_path):
    save_trace(random_trace(), tmp_path / "t")
    assert isinstance(load_trace(tmp_path / "t").topk_ids, np.memmap)
    header = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert (header["format"], header["version"]) == ("moeplace-trace", 1)


def test_released_pages_read_back_the_same(tmp_path):
    save_trace(random_trace(tokens=5000), tmp_path / "t")
    mapped = load_trace(tmp_path / "t").topk_ids  # load_trace has read it all, releasing as it went
    before = np.array(mapped)
    release_pages(mapped)  # the process lets go of the pages; a read faults them back in
    np.testing.assert_array_equal(mapped, before)
    release_pages(before)  # an array in memory: nothing to release


def test_shared_interchange_file_loads(real_trace):
    assert real_trace.meta.model == "openai/gpt-oss-20b"
    assert real_trace.topk_ids.shape[1:] == (24, 4)
    assert real_trace.num_documents == 235


def test_rewriting_a_trace_directory_replaces_it(tmp_path):
    save_trace(random_trace(seed=1), tmp_path / "t")
    save_trace(random_trace(seed=2), tmp_path / "t")
    assert_same(load_trace(tmp_path / "t"), random_trace(seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temporaries left


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(MoeplaceError, match="not replacing"):
        save_trace(random_trace(), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_document_chunks_cover_every_document_once():
    trace = random_trace(tokens=1000, docs=37)
    chunks = list(trace.document_chunks(max_tokens=100))
    assert chunks[0][0] == 0 and chunks[-1][1] == 37
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    assert all(trace.doc_offsets[e] - trace.doc_offsets[f] <= 100 or e == f + 1 for f, e in chunks)


def _write_npz(path, **arrays):
    defaults = {
        "topk_ids": np.array([[[0, 1]], [[2, 3]]], np.int16),
        "doc_offsets": np.array([0, 2]),
        "doc_labels": np.array(["a"]),
        "meta_json": np.array(json.dumps({"model": "m", "num_experts": 4, "top_k": 2, "layer_ids": [0]})),
    }
    np.savez(path, **(defaults | arrays))
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"topk_ids": np.array([[[0, 4]], [[2, 3]]], np.int16)}, "outside"),
        ({"topk_ids": np.array([[[1, 1]], [[2, 3]]], np.int16)}, "twice"),
        ({"doc_offsets": np.array([0, 1])}, "doc_offsets"),
        ({"topk_ids": np.array([[0, 1], [2, 3]], np.int16)}, "shape"),
        ({"topk_ids": np.array([[[0.0, 1.0]], [[2.0, 3.0]]])}, "dtype"),
        (
            {
                "meta_json": np.array(
                    json.dumps({"model": "m", "num_experts": 4, "top_k": 2, "layer_ids": [0, 1]})
                )
            },
            "layers",
        ),
        ({"meta_json": np.array(json.dumps({"model": "m", "top_k": 2, "layer_ids": [0]}))}, "num_experts"),
        ({"doc_labels": np.array(["a", "b"])}, "labels"),
    ],
)
def test_bad_trace_gets_one_line_error_naming_file(tmp_path, arrays, message):
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MoeplaceError, match=message) as info:
        load_trace(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_int32_ids_are_accepted_when_they_fit(tmp_path):
    path = _write_npz(tmp_path / "wide.npz", topk_ids=np.array([[[0, 1]], [[2, 3]]], np.int32))
    assert load_trace(path).topk_ids.dtype == np.int16


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(
        path, topk_ids=np.array([object()], dtype=object), doc_offsets=np.array([0]), meta_json=np.array("{}")
    )
    with pytest.raises(MoeplaceError, match="pickled"):
        load_trace(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", pickle.dumps({"a": 1})])
def test_corrupt_or_empty_files_are_refused(tmp_path, content):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(MoeplaceError, match=r"broken\.npz"):
        load_trace(path)


def test_missing_and_unknown_inputs(tmp_path):
    with pytest.raises(MoeplaceError, match="no such file"):
        load_trace(tmp_path / "nope.npz")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(MoeplaceError, match="not a trace"):
        load_trace(tmp_path / "x.json")
    (tmp_path / "dir").mkdir()
    with pytest.raises(MoeplaceError, match=r"no meta\.json"):
        load_trace(tmp_path / "dir")


def test_trace_directory_checks_its_header(tmp_path):
    save_trace(random_trace(), tmp_path / "t")
    header = json.loads((tmp_path / "t" / "meta.json").read_text())
    (tmp_path / "t" / "meta.json").write_text(json.dumps(header | {"version": 99}))
    with pytest.raises(MoeplaceError, match="version 99"):
        load_trace(tmp_path / "t")
    (tmp_path / "t" / "meta.json").write_text(json.dumps(header | {"num_tokens": 5}))
    with pytest.raises(MoeplaceError, match="5 tokens"):
        load_trace(tmp_path / "t")


def test_padding_marker_is_allowed():
    trace = make_trace([[0, -1], [1, 2]], [2], num_experts=3)
    from moeplace.calibrate.trace import check_trace

    check_trace(trace)

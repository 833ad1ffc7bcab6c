"""The gate cannot be fooled: a held-out set holding calibration documents (or workloads), or
another model's routing, is refused unless allowed, and then labelled in-sample."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import moeplace
from conftest import make_trace, random_trace, refused, run
from moeplace.calibrate.fingerprints import decode_hashes, document_hashes, encode_hashes
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.stats_io import load_statistics, save_statistics
from moeplace.calibrate.trace_io import save_trace
from moeplace.demo import demo_trace_path
from moeplace.validators.evidence import model_key


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The demo trace split in halves, a placement planned on the fit half."""
    d = tmp_path_factory.mktemp("evidence")
    split = run("split", demo_trace_path(), "--fit-out", d / "fit.npz", "--holdout-out", d / "held.npz")
    assert split.exit_code == 0, split.output
    plan = run("plan", d / "fit.npz", "--devices", 8, "--solver", "frequency", "--out", d / "p.yaml")
    assert plan.exit_code == 0, plan.output
    return d


@pytest.mark.slow
def test_the_whole_trace_is_not_held_out(planned):
    """The issue's example: the whole demo trace, calibration documents included, once passed."""
    whole = demo_trace_path()
    fit = moeplace.load_trace(planned / "fit.npz")
    error = refused(run("validate", planned / "p.yaml", whole), whole.name, "calibration documents")
    assert f"{fit.num_documents} of 235 held-out documents" in error and "--allow-overlap" in error
    allowed = run("validate", planned / "p.yaml", whole, "--allow-overlap", "--json")
    assert allowed.exit_code == 0, allowed.output
    holdout = json.loads(allowed.stdout)["holdout"]
    assert holdout["in_sample"] and (holdout["shared"], holdout["of"]) == (fit.num_documents, 235)
    shown = run("validate", planned / "p.yaml", whole, "--allow-overlap")
    assert f"IN-SAMPLE ({fit.num_documents} of 235 documents are calibration documents)" in shown.stdout


@pytest.mark.slow
def test_a_held_out_half_passes_as_held_out(planned):
    result = run("validate", planned / "p.yaml", planned / "held.npz", "--json")
    assert result.exit_code == 0, result.output
    holdout = json.loads(result.stdout)["holdout"]
    assert not holdout["in_sample"] and holdout["shared"] == 0 and holdout["of"] > 0
    assert "warning" not in result.stderr


@pytest.mark.slow
def test_one_calibration_document_is_enough_to_refuse(planned, tmp_path):
    fit, held = moeplace.load_trace(planned / "fit.npz"), moeplace.load_trace(planned / "held.npz")
    mixed = held.select_documents(np.arange(held.num_documents))
    one = fit.select_documents(np.array([3]))
    mixed = dataclasses.replace(
        mixed,
        topk_ids=np.concatenate([mixed.topk_ids, one.topk_ids]),
        doc_offsets=np.append(mixed.doc_offsets, mixed.doc_offsets[-1] + one.num_tokens),
        doc_labels=np.append(mixed.doc_labels, "relabelled"),  # labels do not hide a document
    )
    save_trace(mixed, tmp_path / "mixed.npz")
    refused(run("validate", planned / "p.yaml", tmp_path / "mixed.npz"), "mixed.npz", "1 of")


@pytest.mark.slow
def test_plan_holdout_refuses_overlap_before_planning(tmp_path):
    out = tmp_path / "p.yaml"
    whole = demo_trace_path()
    result = run("plan", whole, "--devices", 8, "--holdout", whole, "--out", out)
    refused(result, whole.name, "235 of 235 held-out documents")
    assert not out.exists()
    allowed = run("plan", whole, "--devices", 8, "--solver", "frequency", "--holdout", whole,
                  "--allow-overlap", "--out", out)  # fmt: skip
    assert allowed.exit_code == 0, allowed.output
    assert "IN-SAMPLE" in allowed.stdout
    assert moeplace.load_placement(out).validation["holdout"]["in_sample"]


@pytest.mark.slow
def test_another_models_routing_is_refused_an_unknown_one_warned(planned, tmp_path):
    held = moeplace.load_trace(planned / "held.npz")
    for name, outcome in [("Qwen/Qwen3-30B-A3B", "refused"), ("unknown (SGLang dump)", "warned"),
                          ("/models/GPT-OSS-20B", "same")]:  # fmt: skip
        relabelled = dataclasses.replace(held, meta=dataclasses.replace(held.meta, model=name))
        path = tmp_path / f"{outcome}.npz"
        save_trace(relabelled, path)
        result = run("validate", planned / "p.yaml", path)
        if outcome == "refused":
            error = refused(result, path.name, "Qwen/Qwen3-30B-A3B")
            assert "--allow-model-mismatch" in error
            allowed = run("validate", planned / "p.yaml", path, "--allow-model-mismatch")
            assert allowed.exit_code == 0 and "warning:" in allowed.stderr, allowed.output
        else:
            assert result.exit_code == 0, result.output
            assert ("warning:" in result.stderr) == (outcome == "warned"), result.stderr


@pytest.mark.slow
def test_the_python_api_names_its_parameters(planned):
    placement = moeplace.load_placement(planned / "p.yaml")
    whole = moeplace.load_trace(demo_trace_path())
    with pytest.raises(moeplace.MoeplaceError, match=r"in-sample: allow_overlap\)") as caught:
        moeplace.validate(placement, whole)
    assert "--" not in str(caught.value)
    validation = moeplace.validate(placement, whole, allow_overlap=True)
    assert validation.evidence.in_sample and validation.summary()["holdout"]["in_sample"]


def test_models_compare_by_name_not_by_note_or_organization():
    assert model_key("openai/gpt-oss-20b (every third document)") == "gpt-oss-20b"
    assert model_key("/models/GPT-OSS-20B/") == model_key("openai/gpt-oss-20b")
    assert model_key("deepseek-ai/DeepSeek-V3") != model_key("Qwen/Qwen3-30B-A3B")
    assert model_key("unknown (SGLang load record)") is None and model_key("") is None


def test_document_hashes_survive_statistics_files_and_merges(tmp_path):
    a, b = random_trace(seed=1), random_trace(seed=2)
    stats = compute_statistics(a)
    np.testing.assert_array_equal(stats.document_hashes, document_hashes(a))
    save_statistics(stats, tmp_path / "a.npz")
    np.testing.assert_array_equal(load_statistics(tmp_path / "a.npz").document_hashes, stats.document_hashes)
    merged = stats + compute_statistics(b)
    assert merged.document_hashes.shape == (a.num_documents + b.num_documents,)
    recorded = decode_hashes(merged.evidence()["document_hashes"])
    np.testing.assert_array_equal(
        recorded, np.unique(np.concatenate([document_hashes(a), document_hashes(b)]))
    )
    assert decode_hashes(encode_hashes(recorded)).dtype == np.uint64


def test_a_statistics_file_with_bad_document_hashes_is_refused(tmp_path):
    save_statistics(compute_statistics(random_trace()), tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        arrays = dict(z)
    arrays["document_hashes"] = arrays["document_hashes"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    result = run("plan", tmp_path / "bad.npz", "--devices", 4, "--out", tmp_path / "p.yaml")
    refused(result, "bad.npz", "document_hashes")


def test_a_split_never_puts_copies_of_a_document_on_both_sides():
    ids = np.argsort(np.random.default_rng(0).random((60, 1, 8)), axis=-1)[..., :2]
    ids[50:60] = ids[0:10]  # the last document repeats the first (a prompt served twice)
    trace = make_trace(ids, [10] * 6, 8)
    for seed in range(20):
        fit, held = moeplace.split_documents(trace, 0.5, seed)
        assert not np.isin(document_hashes(held), document_hashes(fit)).any()
        assert fit.num_documents + held.num_documents == 6


def test_load_records_refuse_a_calibration_workload(tmp_path):
    from test_load_workloads import CONFIG, workload_counts, write_record

    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    for seed, name in enumerate(("a", "b", "c")):
        write_record(tmp_path / f"{name}.json", workload_counts(seed))

    def load(names, out):
        files = [tmp_path / f"{n}.json" for n in names]
        result = run(
            "import", "sglang-load", *files, "--model-config", tmp_path / "config.json", "--out", out
        )
        assert result.exit_code == 0, result.output

    load(["a", "b"], tmp_path / "fit.npz")
    load(["b", "c"], tmp_path / "held.npz")
    load(["c"], tmp_path / "new.npz")
    plan = run(
        "plan", tmp_path / "fit.npz", "--devices", 8, "--redundant-slots", 8, "--out", tmp_path / "p.yaml"
    )
    assert plan.exit_code == 0, plan.output
    refused(
        run("validate", tmp_path / "p.yaml", tmp_path / "held.npz"), "held.npz", "1 of 2 held-out workloads"
    )
    assert run("validate", tmp_path / "p.yaml", tmp_path / "new.npz").exit_code == 0
    allowed = run("validate", tmp_path / "p.yaml", tmp_path / "held.npz", "--allow-overlap")
    assert allowed.exit_code == 0 and "IN-SAMPLE (1 of 2 workloads" in allowed.stdout, allowed.output

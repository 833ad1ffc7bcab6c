"""`moeplace calibrate` on a local model folder, `merge`, and corpus reading, through the CLI."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, pre_tokenizers
from typer.testing import CliRunner

from conftest import random_trace
from moeplace.calibrate.corpus import read_corpus
from moeplace.calibrate.stats import compute_statistics
from moeplace.calibrate.stats_io import load_statistics
from moeplace.calibrate.trace_io import load_trace, save_trace
from moeplace.cli import app
from moeplace.errors import MoeplaceError

runner = CliRunner()
WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "expert",
    "device",
    "token",
    "route",
    "model",
    "layer",
    "data",
    "text",
    "code",
    "math",
]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny OLMoE-style model and a word-level tokenizer, saved as a user's local folder."""
    folder = tmp_path_factory.mktemp("tiny-olmoe")
    torch.manual_seed(0)
    config = hf.OlmoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf.OlmoeForCausalLM(config).save_pretrained(folder)
    vocab = {"[PAD]": 0, "[UNK]": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]"
    ).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_calibrate_a_local_model_then_plan_and_validate(tmp_path, model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "the expert route of the token is the device\n\na model layer and code data in text is math\n"
    )
    result = run(
        "calibrate",
        model_dir,
        "--corpus",
        corpus,
        "--out",
        tmp_path / "t.trace",
        "--max-length",
        8,
        "--batch-size",
        2,
    )
    assert result.exit_code == 0, result.output
    trace = load_trace(tmp_path / "t.trace")
    assert trace.num_documents == 2 and list(trace.doc_labels) == ["corpus", "corpus"]
    np.testing.assert_array_equal(np.diff(trace.doc_offsets), [9, 10])  # one token per word
    assert trace.meta.layer_ids == (0, 1) and (trace.meta.num_experts, trace.meta.top_k) == (8, 2)
    assert trace.meta.model == str(model_dir) and trace.meta.phase == "prefill"

    plan = run("plan", tmp_path / "t.trace", "--devices", 2, "--out", tmp_path / "p.yaml", "--jobs", 1)
    assert plan.exit_code == 0, plan.output
    validate = run("validate", tmp_path / "p.yaml", tmp_path / "t.trace", "--json", "--allow-overlap")
    assert validate.exit_code == 0, validate.output  # scored on its own calibration: in-sample
    figures = json.loads(validate.stdout)
    assert 1.0 <= figures["dev_per_token"] <= 2.0 and figures["holdout"]["in_sample"]


@pytest.mark.slow
def test_calibrate_reads_jsonl_labels_and_several_files(tmp_path, model_dir):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "the code", "domain": "code"})
        + "\n"
        + json.dumps({"text": "math is data"})
        + "\n"
    )
    (tmp_path / "b.txt").write_text("the token\n")
    result = run(
        "calibrate",
        model_dir,
        "--corpus",
        tmp_path / "a.jsonl",
        tmp_path / "b.txt",
        "--out",
        tmp_path / "t.npz",
    )
    assert result.exit_code == 0, result.output
    assert list(load_trace(tmp_path / "t.npz").doc_labels) == ["code", "a", "b"]


@pytest.mark.slow
def test_calibrate_errors_are_one_line(tmp_path, model_dir):
    missing = run("calibrate", tmp_path / "no-model", "--corpus", tmp_path / "c.txt", "--out", tmp_path / "t")
    assert missing.exit_code == 2 and "no such corpus file" in missing.stderr
    (tmp_path / "c.txt").write_text("the model\n")
    no_model = run(
        "calibrate", tmp_path / "no-model", "--corpus", tmp_path / "c.txt", "--out", tmp_path / "t"
    )
    assert no_model.exit_code == 2 and "no-model: no such model folder" in no_model.stderr
    assert len(no_model.stderr.strip().splitlines()) == 1 and not (tmp_path / "t").exists()
    (tmp_path / "bad-model").mkdir()
    (tmp_path / "bad-model" / "config.json").write_text("{")
    bad = run("calibrate", tmp_path / "bad-model", "--corpus", tmp_path / "c.txt", "--out", tmp_path / "t")
    assert bad.exit_code == 2 and "bad-model: cannot load the model" in bad.stderr
    (tmp_path / "empty.txt").write_text("\n\n")
    empty = run("calibrate", model_dir, "--corpus", tmp_path / "empty.txt", "--out", tmp_path / "t")
    assert empty.exit_code == 2 and "empty.txt: no documents" in empty.stderr
    assert len(bad.stderr.strip().splitlines()) == len(empty.stderr.strip().splitlines()) == 1


def test_corpus_forms(tmp_path):
    (tmp_path / "x.txt").write_text("one\nstill one\n\n\n  \ntwo\n")
    (tmp_path / "y.jsonl").write_text('{"text": "a", "label": "L"}\n\n{"text": "b"}\n')
    documents = read_corpus([tmp_path / "x.txt", tmp_path / "y.jsonl"])
    assert [(d.text, d.label) for d in documents] == [
        ("one\nstill one", "x"),
        ("two", "x"),
        ("a", "L"),
        ("b", "y"),
    ]
    (tmp_path / "z.jsonl").write_text('{"txt": "a"}\n')
    with pytest.raises(MoeplaceError, match=r"z\.jsonl: line 1: needs a string field 'text'"):
        read_corpus([tmp_path / "z.jsonl"])


@pytest.mark.slow
def test_merged_traces_give_exactly_the_summed_statistics(tmp_path, real_trace):
    docs = np.arange(real_trace.num_documents)
    save_trace(real_trace.select_documents(docs[:100]), tmp_path / "a.npz")
    save_trace(real_trace.select_documents(docs[100:]), tmp_path / "b")
    assert run("merge", tmp_path / "a.npz", tmp_path / "b", "--out", tmp_path / "ab").exit_code == 0
    merged = load_trace(tmp_path / "ab")
    np.testing.assert_array_equal(merged.topk_ids, real_trace.topk_ids)
    assert merged.fingerprint() != real_trace.fingerprint()  # the source field says it was merged

    result = run("merge", tmp_path / "a.npz", tmp_path / "b", "--out", tmp_path / "ab.stats.npz")
    assert result.exit_code == 0  # two traces: still a trace, even if named .npz
    # statistics of one shard + a trace: merged as statistics, exactly those of the whole
    from moeplace.calibrate.stats_io import save_statistics

    save_statistics(compute_statistics(load_trace(tmp_path / "a.npz"), seed=5), tmp_path / "a.stats.npz")
    result = run("merge", tmp_path / "a.stats.npz", tmp_path / "b", "--seed", 5, "--out", tmp_path / "s.npz")
    assert result.exit_code == 0, result.output
    merged_stats, whole = load_statistics(tmp_path / "s.npz"), compute_statistics(real_trace, seed=5)
    for name in ("load", "coact", "load_resamples"):
        np.testing.assert_array_equal(getattr(merged_stats, name), getattr(whole, name))


def test_merge_refuses_different_models(tmp_path, real_trace):
    save_trace(real_trace.select_documents(np.arange(5)), tmp_path / "a.npz")
    save_trace(random_trace(), tmp_path / "b.npz")
    result = run("merge", tmp_path / "a.npz", tmp_path / "b.npz", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "b.npz" in result.stderr and "does not match" in result.stderr
    save_trace(real_trace.select_documents(np.arange(5, 10)), tmp_path / "c.npz")
    mixed = run("merge", tmp_path / "a.npz", tmp_path / "c.npz", "--seed", 1, "--out", tmp_path / "m")
    assert mixed.exit_code == 0
    twice = run("merge", tmp_path / "a.npz", tmp_path / "a.npz", "--out", tmp_path / "n")
    assert twice.exit_code == 2 and "is given twice" in twice.stderr
    (tmp_path / "copy.npz").write_bytes((tmp_path / "a.npz").read_bytes())
    same = run("merge", tmp_path / "a.npz", tmp_path / "copy.npz", "--out", tmp_path / "n")
    assert same.exit_code == 2 and "holds the same trace as" in same.stderr


@pytest.mark.slow
def test_every_numeric_option_of_calibrate_refuses_in_one_line_or_runs(tmp_path, model_dir, capsys):
    from test_option_values import offending_values

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the expert route of the token\n\na model layer and code data\n")
    base = ["calibrate", str(model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "t.trace")]
    assert not offending_values(base, capsys)

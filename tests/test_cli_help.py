"""``--help`` of every command, as a terminal 80 columns wide shows it: committed to docs/cli.md
(so a change of help text shows in review), and readable: no line past 80 columns, no lost text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli_help():
    spec = importlib.util.spec_from_file_location("cli_help", ROOT / "docs" / "cli_help.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_the_current_help(cli_help):
    assert (ROOT / "docs" / "cli.md").read_text() == cli_help.markdown(), (
        "help text changed: run `python docs/cli_help.py > docs/cli.md`"
    )


def test_help_reads_well_at_80_columns(cli_help):
    texts = cli_help.help_texts()
    assert {"moeplace plan", "moeplace validate", "moeplace compare", "moeplace monitor"} <= set(texts)
    for command, text in texts.items():
        assert all(len(line) <= 80 for line in text.splitlines()), command
        assert "<bool>" not in text and "Traceback" not in text, command
    assert "pip install 'moeplace[cluster]'" in " ".join(texts["moeplace plan"].split())  # not eaten
    for gate in ("moeplace validate", "moeplace plan", "moeplace compare", "moeplace monitor"):
        assert "Exit codes: 0" in texts[gate], gate  # every command that gates says its exit codes
    assert "(0.05: 5% faster)" in " ".join(texts["moeplace validate"].split())  # a unit

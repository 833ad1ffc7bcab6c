"""Calibration corpora: the representative traffic a model is run on.

Two forms, chosen by file name:

- ``*.jsonl``: one JSON object per line with a ``text`` field and an optional label in ``domain``
  or ``label`` (else the file name); each line is one document.
- anything else: plain UTF-8 text, one document per block of lines separated by blank lines,
  labelled with the file name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from moeplace.calibrate.safe_io import loads_json
from moeplace.errors import MoeplaceError, file_error


@dataclasses.dataclass(frozen=True)
class Document:
    text: str
    label: str


def read_corpus(paths: Sequence[str | Path]) -> list[Document]:
    """All documents of all ``paths``, in order. Raises ``MoeplaceError`` naming a bad file or line."""
    documents = []
    for path in map(Path, paths):
        if not path.is_file():
            raise file_error(path, "no such corpus file")
        try:
            documents.extend(_read_jsonl(path) if path.suffix == ".jsonl" else _read_text(path))
        except UnicodeDecodeError as exc:
            raise file_error(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not documents:
        raise MoeplaceError(f"{', '.join(map(str, paths))}: no documents (empty corpus)")
    return documents


def _read_text(path: Path) -> Iterator[Document]:
    for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
        if block.strip():
            yield Document(block.strip(), path.stem)


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line of a JSONL file; a line that is not a JSON
    object raises ``MoeplaceError`` naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = loads_json(line, f"line {number}")
            except MoeplaceError as exc:
                raise file_error(path, exc) from None
            if not isinstance(record, dict):
                raise file_error(path, f"line {number}: not a JSON object")
            yield number, record


def _read_jsonl(path: Path) -> Iterator[Document]:
    for number, record in json_lines(path):
        if not isinstance(record.get("text"), str):
            raise file_error(path, f"line {number}: needs a string field 'text'")
        label = record.get("domain", record.get("label", path.stem))
        if record["text"].strip():
            yield Document(record["text"], str(label))

"""The interchange ``.npz`` (the form of the shared traces); several files are concatenated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from moeplace.calibrate.merge import merged_meta, trace_documents
from moeplace.calibrate.trace_io import load_trace


def read_interchange(paths: Sequence[Path], options):
    traces = [load_trace(path) for path in paths]
    return merged_meta(traces, paths), (doc for trace in traces for doc in trace_documents(trace))

"""Fingerprints of calibration evidence, so a held-out set can be checked for it.

A placement is judged on traffic it was not fit to. To recognize a calibration document in a
"held-out" trace, the statistics keep an exact 64-bit hash of each calibration document's routing
(8 bytes a document: BLAKE2b of its ``topk_ids`` as little-endian int16), and a placement records
them (``calibration.document_hashes``, base64 of the sorted hashes). Load records keep no documents;
their evidence is one hash per workload of its per-layer counts. Two different documents share a
hash with probability about 2^-64 per pair: a match is the same document.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import numpy as np

from moeplace.calibrate.trace import Trace
from moeplace.errors import MoeplaceError

HASH_BYTES = 8


def document_hashes(trace: Trace, first: int = 0, end: int | None = None) -> np.ndarray:
    """uint64 ``[end - first]``: the hash of each document ``first..end-1``'s routing."""
    end = trace.num_documents if end is None else end
    offsets = trace.doc_offsets
    return routing_hashes(
        trace.topk_ids[offsets[first] : offsets[end]], offsets[first : end + 1] - offsets[first]
    )


def routing_hashes(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """uint64 ``[D]``: the hash of each document of routing already read, ``ids`` int16 ``[t, L,
    k]`` holding documents ``offsets[d]:offsets[d + 1]`` (int ``[D + 1]``, from 0); one digest a
    document, not a token."""
    digests = bytearray()
    for start, stop in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        routing = np.ascontiguousarray(ids[start:stop], dtype="<i2")
        digests += hashlib.blake2b(routing.tobytes(), digest_size=HASH_BYTES).digest()
    return np.frombuffer(bytes(digests), dtype="<u8").astype(np.uint64)


def workload_hashes(workload_load: np.ndarray) -> np.ndarray:
    """uint64 ``[W]``: the hash of each workload's counts (int ``[W, L, N]``)."""
    counts = np.ascontiguousarray(workload_load, dtype="<i8")
    digests = b"".join(hashlib.blake2b(w.tobytes(), digest_size=HASH_BYTES).digest() for w in counts)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def encode_hashes(hashes: np.ndarray) -> str:
    """The distinct ``hashes``, sorted, as one base64 string (what a placement file records)."""
    return base64.b64encode(np.unique(hashes).astype("<u8").tobytes()).decode("ascii")


def decode_hashes(text: str) -> np.ndarray:
    """uint64 ``[D]`` from ``encode_hashes``; ``MoeplaceError`` for anything else."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError):
        raise MoeplaceError("calibration document hashes are not base64") from None
    if len(raw) % HASH_BYTES:
        raise MoeplaceError(f"calibration document hashes are not a whole number of {HASH_BYTES}-byte hashes")
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)

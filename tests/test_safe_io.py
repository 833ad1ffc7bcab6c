"""calibrate/safe_io.py (``moeplace.calibrate.safe_io``): files moeplace did not write, read without
believing a claim before it is checked. The same checks through the CLI, as bad input, are in
``test_hostile_limits``."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_one_member_that_compresses_far_is_not_a_bomb(tmp_path):
    """The set counts of a large trace are nearly all 1 and compress ~700x; the archive as a whole
    compresses a few times, and loads."""
    from moeplace.calibrate.safe_io import BOMB_FLOOR, open_npz

    counts = np.ones(BOMB_FLOOR // 8 + 1, np.int64)
    noise = np.random.default_rng(0).integers(0, 1 << 62, BOMB_FLOOR // 8 // 150, dtype=np.int64)
    np.savez_compressed(tmp_path / "a.npz", set_counts=counts, sets=noise)
    with open_npz(tmp_path / "a.npz") as archive:
        assert archive["set_counts"].shape == counts.shape


def test_read_text_refuses_what_it_cannot_be(tmp_path):
    """A directory, a FIFO, a missing file, an oversized file and bytes that are not UTF-8: each
    one MoeplaceError naming the file, before anything is read."""
    import os

    from moeplace.calibrate.safe_io import read_text
    from moeplace.errors import MoeplaceError

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "big.yaml").write_text("x" * 100)
    (tmp_path / "latin.yaml").write_bytes(b"caf\xe9")
    cases = [
        (tmp_path, "a directory"),
        (tmp_path / "pipe", "not a regular file"),
        (tmp_path / "missing.yaml", "no such file"),
        (tmp_path / "latin.yaml", "not UTF-8"),
    ]
    for path, problem in cases:
        with pytest.raises(MoeplaceError, match=problem) as caught:
            read_text(path)
        assert path.name in str(caught.value)
    with pytest.raises(MoeplaceError, match="100 bytes is larger"):
        read_text(tmp_path / "big.yaml", max_bytes=99)
    assert read_text(tmp_path / "big.yaml", max_bytes=100) == "x" * 100


def test_loads_json_says_what_is_wrong():
    from moeplace.calibrate.safe_io import loads_json
    from moeplace.errors import MoeplaceError

    assert loads_json('{"a": [1, 2]}', "x.json") == {"a": [1, 2]}
    with pytest.raises(MoeplaceError, match=r"x\.json is not valid JSON"):
        loads_json("{", "x.json")
    with pytest.raises(MoeplaceError, match="nests too deeply"):
        loads_json("[" * 100_000 + "]" * 100_000, "x.json")


def test_an_npy_is_checked_against_its_bytes_before_it_is_read(tmp_path):
    """A header claiming more than the file holds, or pickled objects, is refused unread; an
    honest array loads, memory-mapped where asked."""
    from moeplace.calibrate.safe_io import load_npy, load_npy_bytes
    from moeplace.errors import MoeplaceError

    honest = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.save(tmp_path / "ok.npy", honest)
    assert np.array_equal(load_npy(tmp_path / "ok.npy", mmap_mode="r"), honest)
    with open(tmp_path / "claims.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)})
    with pytest.raises(MoeplaceError, match=r"claims \(1099511627776,\)"):
        load_npy(tmp_path / "claims.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MoeplaceError, match="pickled objects"):
        load_npy(tmp_path / "objects.npy")
    data = (tmp_path / "ok.npy").read_bytes()
    assert np.array_equal(load_npy_bytes(data, "inline"), honest)
    with pytest.raises(MoeplaceError, match="inline claims"):
        load_npy_bytes(data[:-4], "inline")


def test_an_npz_member_that_inflates_past_the_archive_ratio_is_refused(tmp_path):
    """Zeros past ``BOMB_FLOOR`` compress ~1000x: refused by name before inflating; a damaged or
    non-zip file is one MoeplaceError."""
    import zipfile

    from moeplace.calibrate.safe_io import BOMB_FLOOR, open_npz
    from moeplace.errors import MoeplaceError

    path = tmp_path / "bomb.npz"
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z,
        z.open("zeros.npy", "w", force_zip64=True) as f,
    ):
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|i1", "fortran_order": False, "shape": (BOMB_FLOOR + 1,)}
        )
        f.write(bytes(BOMB_FLOOR + 1))
    with open_npz(path) as archive, pytest.raises(MoeplaceError, match=r"zeros\.npy inflates"):
        archive["zeros"]
    (tmp_path / "not.npz").write_bytes(b"PK not really")
    with pytest.raises(MoeplaceError, match=r"not a readable \.npz"), open_npz(tmp_path / "not.npz"):
        pass

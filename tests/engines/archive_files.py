"""The pinned engine archives in ``.engines/`` and their Python files, extracted once.

Shared by the engine tests (``harness.py``) and ``benchmarks/peers.py``; no pytest, no engine code.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINES = HERE.parent.parent / ".engines"
FETCH = "python tests/engines/fetch.py"


def pinned(name: str, version: str) -> dict:
    """The ``archives.json`` entry of ``name`` ``version``: ``file``, ``sha256``, ..."""
    entries = json.loads((HERE / "archives.json").read_text())["archives"]
    return next(e for e in entries if (e["name"], e["version"]) == (name, version))


def extracted(path: Path) -> Path:
    """The Python files of archive ``path`` (a wheel or an sdist), extracted once under
    ``.engines/src/``; returns the directory holding the packages."""
    stem = path.name.removesuffix(".tar.gz").removesuffix(".whl")
    target = ENGINES / "src" / stem
    done = target / ".extracted"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                wheel.extractall(target, [n for n in wheel.namelist() if n.endswith(".py")])
        else:
            with tarfile.open(path) as sdist:
                members = [m for m in sdist.getmembers() if m.isfile() and m.name.endswith(".py")]
                sdist.extractall(target, members, filter="data")
        done.touch()
    inner = target / stem  # an sdist unpacks into name-version/
    return inner if inner.is_dir() else target

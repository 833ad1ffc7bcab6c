"""Fetch the serving engines' released archives that the conformance tests run (``-m engines``).

    python tests/engines/fetch.py          # into .engines/ at the project root; ~190 MB the first time

Each archive in ``archives.json`` is downloaded from PyPI once, checked against its pinned sha256,
and kept; nothing is installed. The tests then run without network.
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "archives.json"
DEST = HERE.parent.parent / ".engines"
INDEX = "https://pypi.org/pypi/{name}/json"


def archives() -> list[dict]:
    """The pinned archives: dicts with name, version, file, sha256."""
    return json.loads(MANIFEST.read_text())["archives"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(entry: dict, dest: Path) -> Path:
    """Download ``entry`` into ``dest`` unless a copy with the pinned sha256 is there."""
    target = dest / entry["file"]
    if target.is_file() and sha256(target) == entry["sha256"]:
        return target
    index_url = INDEX.format(name=entry["name"])
    with urllib.request.urlopen(index_url, timeout=60) as response:
        release = json.load(response)["releases"].get(entry["version"], [])
    found = [f for f in release if f["filename"] == entry["file"]]
    if not found:
        raise SystemExit(f"error: {entry['file']}: not on PyPI under {entry['name']} {entry['version']}")
    partial = target.with_suffix(target.suffix + ".part")
    url = urllib.parse.urljoin(index_url, found[0]["url"])
    with urllib.request.urlopen(url, timeout=600) as response, partial.open("wb") as handle:
        while block := response.read(1 << 20):
            handle.write(block)
    if sha256(partial) != entry["sha256"]:
        partial.unlink()
        raise SystemExit(f"error: {entry['file']}: sha256 differs from the pin in {MANIFEST.name}")
    partial.replace(target)
    return target


def main() -> None:
    DEST.mkdir(exist_ok=True)
    for entry in archives():
        path = fetch(entry, DEST)
        print(f"{entry['name']} {entry['version']}: {path.relative_to(DEST.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()

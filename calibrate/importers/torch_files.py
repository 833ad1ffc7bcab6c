"""Safe loading of ``.pt`` files: ``torch.load(weights_only=True)``, never a full unpickle."""

from __future__ import annotations

from pathlib import Path

from moeplace.errors import MoeplaceError, file_error


def load_pt(path: Path):
    """The object in a ``.pt`` file, restricted to tensors and plain containers."""
    try:
        import torch
    except ImportError:
        raise MoeplaceError("reading .pt files needs torch: pip install 'moeplace[calibrate]'") from None
    if not path.is_file():
        raise file_error(path, "no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise file_error(path, f"not a safe torch file ({first[:200]})") from None

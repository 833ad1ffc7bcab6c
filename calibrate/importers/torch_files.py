"""Safe loading of ``.pt`` files: ``torch.load(weights_only=True)``, never a full unpickle."""

from __future__ import annotations

import pickle
from pathlib import Path

from moeplace.calibrate.safe_io import check_regular_file
from moeplace.errors import MoeplaceError, file_error


def load_pt(path: Path):
    """The object in a ``.pt`` file, restricted to tensors and plain containers."""
    try:
        import torch
    except ImportError:
        raise MoeplaceError("reading .pt files needs torch: pip install 'moeplace[calibrate]'") from None
    check_regular_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message ends advising weights_only=False: never do that
        raise file_error(
            path,
            "not a safe torch file: it holds objects beyond tensors and plain containers; not unpickling it",
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise file_error(path, f"not a readable torch file ({first[:200]})") from None

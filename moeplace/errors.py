"""The one exception type for a user's mistake: bad input, impossible request."""


class MoeplaceError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits 2.

    Messages name the file (when there is one) and the problem: ``"fit.npz: topk_ids has 3 dims"``.
    """


def file_error(path, problem: str) -> MoeplaceError:
    """``MoeplaceError`` for ``path`` with the message ``"<path>: <problem>"``."""
    return MoeplaceError(f"{path}: {problem}")

"""The one exception type for a user's mistake: bad input, impossible request."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable

# a parameter named in a message: "{=num_devices}"; spelled for whoever reads it (render)
PARAMETER = re.compile(r"\{=([a-z_][a-z0-9_]*)\}")


class MoeplaceError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits 2.

    Messages name the file (when there is one) and the problem: ``"fit.npz: topk_ids has 3 dims"``.
    A message names the parameter that set a refused value as ``{=name}`` (the Python parameter):
    ``str()`` spells it for Python callers (``num_devices``), the CLI as the flag a user typed
    (``--devices``), through one table (``moeplace.cli.app.FLAGS``).
    """

    def render(self, spell: Callable[[str], str]) -> str:
        """The message with every ``{=name}`` spelled by ``spell(name)``."""
        return PARAMETER.sub(lambda m: spell(m[1]), str(self.args[0]) if self.args else "")

    def __str__(self) -> str:
        return self.render(lambda name: name)


def file_error(path, problem: str | Exception) -> MoeplaceError:
    """``MoeplaceError`` for ``path`` with the message ``"<path>: <problem>"`` (a ``MoeplaceError``'s
    parameters left for the reader's spelling)."""
    return MoeplaceError(f"{path}: {raw_message(problem)}")


def raw_message(problem: str | Exception) -> str:
    """The text of ``problem``, a ``MoeplaceError``'s with its ``{=name}`` parameters unspelled."""
    if isinstance(problem, MoeplaceError) and problem.args:
        return str(problem.args[0])
    return str(problem)


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'greedy-capped'?)"`` for the choice closest to a mistyped ``value``
    (dashes and underscores alike), or ``""`` when none is close."""
    choices = list(choices)
    spelled = {choice.replace("_", "-").lower(): choice for choice in choices}
    close = difflib.get_close_matches(value.replace("_", "-").lower(), list(spelled), n=1, cutoff=0.6)
    return f" (did you mean {spelled[close[0]]!r}?)" if close else ""

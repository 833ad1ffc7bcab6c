"""Terminal output every command shares: the two consoles (stdout for results, stderr for errors
and progress), one-line tagged messages, control characters escaped, errors named by their file."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from rich.console import Console
from rich.text import Text

from moeplace.errors import MoeplaceError, file_error, raw_message
from moeplace.planner.placement import yaml_safe


class _Console(Console):
    """A console for user text (paths, model names, labels): no markup, no emoji codes, and
    control characters in strings escaped (line breaks of multi-line text kept) so a file cannot
    drive the terminal. One-line messages go through ``tagged``, which escapes line breaks too."""

    def print(self, *objects, **kwargs):
        def clean(text: str) -> str:
            return "\n".join(printable(line) for line in text.split("\n"))

        super().print(*(clean(o) if isinstance(o, str) else o for o in objects), **kwargs)


out = _Console(soft_wrap=True, markup=False, highlight=False, emoji=False)
err = _Console(stderr=True, soft_wrap=True, markup=False, highlight=False, emoji=False)


def tagged(tag: str, style: str, message: str) -> Text:
    """``tag`` in ``style``, then the message (control characters escaped)."""
    return Text.assemble((tag, style), " ", printable(message))


def printable(text: str) -> str:
    """``text`` with control characters (a newline or an escape sequence in a file name) escaped,
    so a message stays one line and never drives the terminal."""
    return CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


# C0/C1 controls, and the invisible formatting characters (bidi overrides) that reorder a line
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


@contextlib.contextmanager
def named(path: Path):
    """Prefix a ``MoeplaceError`` raised inside with ``path`` (once: not when it names it first)."""
    try:
        yield
    except MoeplaceError as exc:
        if raw_message(exc).startswith(f"{path}:"):
            raise
        raise file_error(path, exc) from None


def print_json(document: dict) -> None:
    """The one JSON object a command prints with --json (its other lines are silenced)."""
    print(json.dumps(yaml_safe(document)))

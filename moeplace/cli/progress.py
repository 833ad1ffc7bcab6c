"""Progress on stderr for long work: a bar on a terminal, a line a minute in a log or a pipe."""

from __future__ import annotations

import contextlib
import threading
import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from moeplace.cli.console import err


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:,.0f} {self.unit}/s")


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "layers"):
    """Progress on stderr; yields ``advance(n=1)``. On a terminal, a bar with rate and time left;
    otherwise (a CI log, a pipe) a plain line at least every ``LOG_EVERY`` seconds, so a long run
    is never silent, and nothing for runs shorter than that."""
    if not err.is_terminal:
        with _progress_lines(description, total, unit) as advance:
            yield advance
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


LOG_EVERY = 60.0  # seconds between progress lines when stderr is not a terminal


@contextlib.contextmanager
def _progress_lines(description: str, total: int, unit: str):
    """A daemon thread prints ``description: done/total unit, elapsed`` every ``LOG_EVERY`` s."""
    done, start, stop = [0], time.monotonic(), threading.Event()

    def report():
        while not stop.wait(LOG_EVERY):
            minutes, seconds = divmod(int(time.monotonic() - start), 60)
            err.print(f"{description}: {done[0]}/{total} {unit}, {minutes} min {seconds:02d} s")

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield lambda n=1: done.__setitem__(0, done[0] + n)
    finally:
        stop.set()
        thread.join()

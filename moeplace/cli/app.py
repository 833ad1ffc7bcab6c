"""The ``moeplace`` Typer app, and how a command ends: a user error as one line, an interrupt as
128 + its signal (commands are registered in ``moeplace/cli/__init__.py``).

Exit codes: 0 success, 1 a validation gate failed, 2 bad input (one line on stderr naming the
file and the problem).
"""

from __future__ import annotations

import functools
import signal
from typing import Annotated

import typer

from moeplace import __version__
from moeplace.cli.console import err, out, printable, tagged
from moeplace.errors import MoeplaceError

app = typer.Typer(
    help="Plan expert placement for sharded MoE inference: fewer devices per token, balanced load.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: paragraphs reflow to the terminal, flags read as --x / --no-x
)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"moeplace {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    pass  # the app's own options; its help text is the Typer's


class Interrupted(KeyboardInterrupt):
    """Ctrl-C's ``KeyboardInterrupt``, raised for another signal (SIGTERM): it carries the signal,
    so the exit code is 128 + that signal wherever the interrupt is caught."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_interrupted(signum: int, frame) -> None:
    """A signal handler: unwind like Ctrl-C (temporaries removed, workers stopped), signal kept."""
    raise Interrupted(signum)


def interrupt_exit_code(interrupt: BaseException | None) -> int:
    """128 + the signal that ``interrupt`` carries (SIGINT for a plain Ctrl-C)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def user_errors(command):
    """Turn ``MoeplaceError`` into one line on stderr and exit code 2, and an interrupt into one
    line and exit 128 + the signal, after every ``finally`` has removed its temporary files. With
    ``--json`` (a parameter ``as_json``) the command's own lines stay off stdout."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        quiet = out.quiet
        out.quiet = quiet or bool(kwargs.get("as_json"))
        try:
            return command(*args, **kwargs)
        except MoeplaceError as exc:
            err.print(tagged("error:", "red", printable(exc.render(flag))))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see moeplace.cli.main); outputs are atomic
            err.print(tagged("error:", "red", "interrupted; no output was written"))
            raise typer.Exit(interrupt_exit_code(exc)) from None
        finally:
            out.quiet = quiet

    return wrapper


# library parameters set by a flag of another name; any other parameter p is set by --p (dashes)
FLAGS = {"num_devices": "--devices", "num_nodes": "--nodes"}


def flag(parameter: str) -> str:
    """The flag a CLI user types to set the library's ``parameter`` (``MoeplaceError.render``)."""
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))

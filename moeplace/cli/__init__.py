"""The ``moeplace`` command line: ``app`` with its commands registered, and ``main``, the script."""

import re
import signal
import sys
import warnings

import typer

from moeplace.cli import calibration, deploy, diagnosis, evaluation, measure, monitoring, planning  # noqa: F401  (registers the commands)
from moeplace.cli.app import INTERRUPTS, app, err, printable, tagged
from moeplace.errors import did_you_mean

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run ``app`` the way every user error is reported: Typer's usage errors too (a bad option
    value, a missing argument) become one line on stderr and exit code 2, not a framed box."""
    args = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds like Ctrl-C: temporaries removed, workers stopped
    warnings.simplefilter("ignore")  # library warnings would print before the one error line
    try:
        code = app(args=args or ["--help"], prog_name="moeplace", standalone_mode=False)
    except typer.Abort:  # interrupted outside a command's own handling
        err.print(tagged("error:", "red", "interrupted"))
        sys.exit(128 + INTERRUPTS.get("signal", signal.SIGINT))
    except typer.TyperException as exc:  # Typer's (vendored) Click usage errors
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        choice = re.search(r"'([^']*)' is not one of (.*)", message)  # an unknown name: the closest known
        if choice:
            message = message.rstrip(".") + did_you_mean(choice[1], re.findall(r"'([^']*)'", choice[2]))
        command = getattr(getattr(exc, "ctx", None), "command_path", None) or "moeplace"
        err.print(tagged("error:", "red", printable(f"{message} (see '{command} --help')")))
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


def _interrupt(signum, frame) -> None:
    INTERRUPTS["signal"] = signum
    raise KeyboardInterrupt

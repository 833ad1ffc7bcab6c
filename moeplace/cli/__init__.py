"""The ``moeplace`` command line: ``app`` with every command registered, and ``main``, the script.

Each command is a function in the module of its job; ``COMMANDS`` says which, in ``--help``'s order.
What the commands share lives beside them: ``app`` (the Typer app, errors and interrupts),
``console`` (output), ``options`` (option declarations), ``parsing`` (list values), ``progress``.
"""

import re
import signal
import sys
import warnings

import typer

from moeplace.cli import calibration, deploy, diagnosis, evaluation, measure, monitoring, planning
from moeplace.cli.app import app, interrupt_exit_code, raise_interrupted
from moeplace.cli.console import err, printable, tagged
from moeplace.errors import did_you_mean

__all__ = ["COMMANDS", "app", "main"]

COMMANDS = {
    "calibrate": calibration.calibrate,
    "import": calibration.import_,
    "merge": calibration.merge,
    "export": deploy.export_command,
    "permute-checkpoint": deploy.permute_checkpoint_command,
    "diagnose": diagnosis.diagnose_command,
    "split": planning.split,
    "stats": planning.stats,
    "plan": planning.plan,
    "validate": evaluation.validate,
    "compare": evaluation.compare,
    "demo": evaluation.demo,
    "profile": measure.profile,
    "bench": measure.bench,
    "monitor": monitoring.monitor,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def main(argv: list[str] | None = None) -> None:
    """Run ``app`` the way every user error is reported: Typer's usage errors too (a bad option
    value, a missing argument) become one line on stderr and exit code 2, not a framed box."""
    args = sys.argv[1:] if argv is None else list(argv)
    signal.signal(
        signal.SIGTERM, raise_interrupted
    )  # unwinds like Ctrl-C: temporaries removed, workers stopped
    warnings.simplefilter("ignore")  # library warnings would print before the one error line
    try:
        code = app(args=args or ["--help"], prog_name="moeplace", standalone_mode=False)
    except typer.Abort as exc:  # interrupted outside a command's own handling
        err.print(tagged("error:", "red", "interrupted"))
        sys.exit(interrupt_exit_code(exc.__cause__))
    except typer.TyperException as exc:  # Typer's (vendored) Click usage errors
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        choice = re.search(r"'([^']*)' is not one of (.*)", message)  # an unknown name: the closest known
        if choice:
            message = message.rstrip(".") + did_you_mean(choice[1], re.findall(r"'([^']*)'", choice[2]))
        command = getattr(getattr(exc, "ctx", None), "command_path", None) or "moeplace"
        err.print(tagged("error:", "red", printable(f"{message} (see '{command} --help')")))
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)

"""The ``moeplace`` command line: ``app`` with its commands registered."""

from moeplace.cli import calibration, deploy, diagnosis, planning  # noqa: F401  (registers the commands)
from moeplace.cli.app import app

__all__ = ["app"]

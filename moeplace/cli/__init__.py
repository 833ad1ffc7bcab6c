"""The ``moeplace`` command line: ``app`` with the planning and calibration commands registered."""

from moeplace.cli import calibration, planning  # noqa: F401  (registers the commands)
from moeplace.cli.app import app

__all__ = ["app"]

"""The ``moeplace`` command line: ``app`` with the planning, calibration and deploy commands registered."""

from moeplace.cli import calibration, deploy, planning  # noqa: F401  (registers the commands)
from moeplace.cli.app import app

__all__ = ["app"]

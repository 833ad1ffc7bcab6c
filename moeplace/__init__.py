"""moeplace: expert placement for sharded Mixture-of-Experts inference.

Data flows one way: ``moeplace.calibrate`` (traces, statistics) -> ``moeplace.planner``
(solvers, placement files) -> ``moeplace.validators`` (held-out scoring, gates, comparisons).
``moeplace.cli`` wires them into the ``moeplace`` command.
"""

__version__ = "0.1.0"

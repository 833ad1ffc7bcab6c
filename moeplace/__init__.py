"""moeplace: expert placement for sharded Mixture-of-Experts inference.

Data flows one way: ``moeplace.calibrate`` (traces, statistics) -> ``moeplace.planner``
(solvers, placement files) -> ``moeplace.validators`` (held-out scoring, gates, comparisons).
``moeplace.cli`` wires them into the ``moeplace`` command. The names below are the Python API::

    trace = moeplace.load_trace(moeplace.demo_trace_path())
    fit, held = moeplace.split_documents(trace, holdout_share=0.5, seed=0)
    stats = moeplace.compute_statistics(fit)
    topology = moeplace.Topology(num_experts=stats.meta.num_experts, num_devices=8)
    placement = moeplace.plan(stats, topology, "greedy-capped", moeplace.SolverOptions(load_tolerance=0.1))
    validation = moeplace.validate(placement, held)
    moeplace.save_placement(validation.recorded_placement(), "placement.yaml")
    moeplace.export(moeplace.load_placement("placement.yaml"), "sglang", "expert_location.json",
                    num_hidden_layers=24)

They load on first use, so ``import moeplace`` stays fast.
"""

import importlib
import os

__version__ = "0.1.0"

# Imported from a checkout rather than from the installed package (a script run in the
# repository's root finds this folder first on sys.path), the layers moeplace.calibrate, .planner
# and .validators are the folders beside this one, as pyproject.toml maps them when installing.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(__path__[0], "calibrate")) and os.path.isfile(
    os.path.join(_CHECKOUT, "calibrate", "__init__.py")
):
    __path__.append(_CHECKOUT)

_API = {
    "load_trace": "moeplace.calibrate.trace_io",
    "save_trace": "moeplace.calibrate.trace_io",
    "split_documents": "moeplace.calibrate.split",
    "compute_statistics": "moeplace.calibrate.stats",
    "Topology": "moeplace.planner.topology",
    "SolverOptions": "moeplace.planner.solvers.base",
    "SOLVERS": "moeplace.planner.solvers",
    "plan": "moeplace.planner.plan",
    "Placement": "moeplace.planner.placement",
    "load_placement": "moeplace.planner.placement",
    "save_placement": "moeplace.planner.placement",
    "validate": "moeplace.validators.report",
    "export": "moeplace.deploy.engines",
    "MoeplaceError": "moeplace.errors",
    "demo_trace_path": "moeplace.demo",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'moeplace' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

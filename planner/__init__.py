"""Placement planning: solvers turn per-layer statistics into expert -> device maps."""

"""Scoring placements on held-out traces: dev/token, device load, gates, comparisons."""

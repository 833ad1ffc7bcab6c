"""Locality diagnostics of a routing trace: co-activation structure, prefetch, caching, consistency."""

"""Routing traces in, statistics out: the upstream end of moeplace."""

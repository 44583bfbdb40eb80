"""Kubernetes rules as pure functions (no I/O): label selectors, label and taint syntax, versions."""

"""Drivers: the one interface through which an agent reads and changes its node (sim or Kubernetes)."""

"""Flotilla scheduler: Places workloads on clusters by selectors, taints, weights and spread; re-places on change."""

__version__ = "0.1.0"

"""Flotilla upgrade-orchestrator: Plans and runs safe Kubernetes upgrade rollouts across the fleet."""

__version__ = "0.1.0"

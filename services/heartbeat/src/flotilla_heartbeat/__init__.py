"""Flotilla heartbeat: Turns node heartbeats into node and cluster health; publishes only transitions."""

__version__ = "0.1.0"

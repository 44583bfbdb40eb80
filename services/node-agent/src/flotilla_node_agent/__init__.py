"""Flotilla node-agent: Runs on every node: heartbeats, node reports and the node-level upgrade steps."""

__version__ = "0.1.0"

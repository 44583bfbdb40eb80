"""Flotilla registration: Join tokens, cluster approval and the fleet inventory of clusters and nodes."""

__version__ = "0.1.0"

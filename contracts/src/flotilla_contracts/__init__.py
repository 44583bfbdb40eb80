"""Flotilla's versioned message contracts: the only thing services share."""

__version__ = "1.0.0"
CONTRACTS_VERSION = __version__

"""Flotilla client library and the `flotilla` command line."""

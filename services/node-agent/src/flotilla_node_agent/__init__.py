"""Flotilla node-agent service."""

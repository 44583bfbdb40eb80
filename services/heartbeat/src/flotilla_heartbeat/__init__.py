"""Flotilla heartbeat service."""

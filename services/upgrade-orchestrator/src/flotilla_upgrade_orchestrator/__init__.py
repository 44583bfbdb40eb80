"""Flotilla upgrade-orchestrator service."""

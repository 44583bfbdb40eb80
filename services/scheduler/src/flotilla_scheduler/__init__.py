"""Flotilla scheduler service."""

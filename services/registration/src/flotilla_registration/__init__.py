"""Flotilla registration service."""

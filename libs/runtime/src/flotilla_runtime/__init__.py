"""Flotilla service runtime: what every service process is built from."""

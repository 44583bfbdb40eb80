"""Version 1 of every Flotilla message, one module per domain."""

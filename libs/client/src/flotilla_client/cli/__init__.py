"""The `flotilla` command line: click commands over the client library, one small module per topic."""

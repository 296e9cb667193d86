"""The ``servetune`` command line."""

from servetune.cli._main import cli, main

__all__ = ["cli", "main"]

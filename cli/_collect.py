"""``servetune collect``: defined in :mod:`servetune.data.collect._command` (GPU hosts can run it
as ``python -m servetune.data.collect`` without the rest of the CLI's dependencies)."""

from servetune.data.collect._command import command

__all__ = ["command"]

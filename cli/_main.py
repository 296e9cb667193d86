"""The ``servetune`` command group: global options, error handling, sub-command registry.

Each sub-command lives in its own module ``servetune.cli._<name>`` exposing ``command`` (a
``click.Command``). A module is imported only when its command runs (or ``--help`` lists it), so
``servetune ingest`` does not pay for MLflow, numba or paramiko, and a GPU host without the
tuner's dependencies can still run ``servetune collect``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import signal
import sys
import threading

import click

from servetune import ServetuneError
from servetune.data import Workspace

__all__ = ["cli", "main", "Context", "emit_json"]

# Sub-command name -> module under servetune.cli, in the order ``servetune --help`` lists them.
_COMMAND_MODULES = {
    "ingest": "_ingest",
    "data": "_data",
    "collect": "_collect",
    "train": "_train",
    "models": "_models",
    "simulate": "_simulate",
    "tune": "_tune",
    "report": "_report",
    "validate": "_validate",
}


class _LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        return importlib.import_module(f"servetune.cli.{module}").command


class Context:
    """What every sub-command receives: the workspace and output preferences."""

    def __init__(self, workspace: Workspace, verbose: int) -> None:
        self.workspace = workspace
        self.verbose = verbose


def emit_json(payload: object) -> None:
    """Print one JSON document on stdout (the ``--json`` contract of every command)."""
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="Workspace directory (default: $SERVETUNE_WORKSPACE, else the current one).")
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr (-vv for debug).")
@click.version_option(package_name="servetune")
@click.pass_context
def cli(ctx: click.Context, workspace: str | None, verbose: int) -> None:
    """servetune: tune LLM serving engines with learned simulators and real verification."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    ctx.obj = Context(Workspace.resolve(workspace), verbose)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C so that every ``finally`` and
    every started remote service is stopped the same way."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def _terminate_like_interrupt():
    """SIGTERM and SIGHUP behave as Ctrl-C for the duration of a command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_terminated)
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    try:
        with _terminate_like_interrupt():
            cli.main(args=argv, prog_name="servetune", standalone_mode=False)
    except Terminated as exc:
        click.echo(f"servetune: stopped by {exc}", err=True)
        return 143
    except KeyboardInterrupt:
        click.echo("servetune: interrupted", err=True)
        return 130
    except ServetuneError as exc:
        click.echo(f"servetune: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("servetune: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``servetune`` command group: global options, error handling, sub-command registry.

Each sub-command lives in its own module ``servetune.cli._<name>`` exposing ``command`` (a
``click.Command``). A module is imported only when its command runs (or ``--help`` lists it), so
``servetune ingest`` does not pay for MLflow, numba or paramiko, and a GPU host without the
tuner's dependencies can still run ``servetune collect``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import json
import logging
import os
import signal
import sys
import threading

import click

from servetune import ServetuneError
from servetune.data import Workspace

__all__ = ["cli", "main", "Context", "emit_json", "with_global_options"]

# Sub-command name -> module under servetune.cli, in the order ``servetune --help`` lists them.
_COMMAND_MODULES = {
    "ingest": "_ingest",
    "data": "_data",
    "collect": "_collect",
    "train": "_train",
    "models": "_models",
    "simulate": "_simulate",
    "tune": "_tune",
    "studies": "_studies",
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
        return with_global_options(importlib.import_module(f"servetune.cli.{module}").command)


class Context:
    """What every sub-command receives: the workspace and output preferences."""

    def __init__(self, workspace: Workspace, verbose: int) -> None:
        self.workspace = workspace
        self.verbose = verbose


# The global options: accepted before the sub-command (on the group) and after it (added to
# every sub-command by ``with_global_options``), with the same meaning in both places.
_WORKSPACE_HELP = "Workspace directory (default: $SERVETUNE_WORKSPACE, else the current one)."
_VERBOSE_HELP = "More diagnostics on stderr (-v info, -vv debug); counts add up wherever given."


def _global_options() -> list[click.Option]:
    return [click.Option(["--workspace", "global_workspace"], type=click.Path(file_okay=False),
                         default=None, help=_WORKSPACE_HELP),
            click.Option(["-v", "--verbose", "global_verbose"], count=True, help=_VERBOSE_HELP)]


def _apply_global_options(ctx: click.Context, workspace: str | None, verbose: int) -> None:
    """Merge one level's global options into ``ctx.obj``: a later ``--workspace`` wins, ``-v``
    counts add up; logging is set to the resulting level."""
    parent = ctx.obj if isinstance(ctx.obj, Context) else None
    if workspace or parent is None:
        resolved = Workspace.resolve(workspace)
    else:
        resolved = parent.workspace
    total = verbose + (parent.verbose if parent is not None else 0)
    level = logging.WARNING - 10 * min(total, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if verbose:
        logging.getLogger().setLevel(level)
    ctx.obj = Context(resolved, total)


def with_global_options(command: click.Command) -> click.Command:
    """A copy of ``command`` (and, for a group, of its sub-commands) that also accepts
    ``--workspace`` and ``-v/--verbose``, applied before its own callback runs."""
    wrapped = copy.copy(command)
    wrapped.params = [*command.params, *_global_options()]
    original = command.callback

    def callback(*args, global_workspace=None, global_verbose=0, **kwargs):
        _apply_global_options(click.get_current_context(), global_workspace, global_verbose)
        return original(*args, **kwargs) if original is not None else None

    if original is not None:
        functools.update_wrapper(callback, original)
    wrapped.callback = callback
    if isinstance(command, click.Group):
        wrapped.commands = {name: with_global_options(sub)
                            for name, sub in command.commands.items()}
    return wrapped


def emit_json(payload: object) -> None:
    """Print one JSON document on stdout (the ``--json`` contract of every command)."""
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help=_WORKSPACE_HELP + " Also accepted after the sub-command.")
@click.option("-v", "--verbose", count=True,
              help=_VERBOSE_HELP + " Also accepted after the sub-command.")
@click.version_option(package_name="servetune")
@click.pass_context
def cli(ctx: click.Context, workspace: str | None, verbose: int) -> None:
    """servetune: tune LLM serving engines with learned simulators and real verification."""
    _apply_global_options(ctx, workspace, verbose)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C so that every ``finally`` and
    every started remote service is stopped the same way."""


def _in_compiled_callback(frame) -> bool:
    """Whether ``frame`` is numba's Python code, called back from compiled code: an exception
    raised there by a signal handler is swallowed (seen in ``numba.core.serialize``)."""
    return f"{os.sep}numba{os.sep}" in frame.f_code.co_filename


def _raise_from_handler(exc: BaseException, frame) -> None:
    """Raise ``exc`` from a signal handler where it cannot be lost: now, or, when the signal
    landed in a callback from compiled code, as soon as the nearest Python caller of that code
    runs again (through a one-shot trace function on that frame)."""
    target = frame
    while target is not None and _in_compiled_callback(target):
        target = target.f_back
    if target is frame or target is None:
        raise exc

    def raise_here(traced, event, arg):
        sys.settrace(None)
        traced.f_trace = None
        raise exc

    target.f_trace, target.f_trace_lines = raise_here, False
    sys.settrace(lambda *args: None)  # enables the frame's trace; new frames are not traced


def _raise_interrupt(signum, frame) -> None:
    _raise_from_handler(KeyboardInterrupt(), frame)


def _raise_terminated(signum, frame) -> None:
    _raise_from_handler(Terminated(f"signal {signal.Signals(signum).name}"), frame)


@contextlib.contextmanager
def _terminate_like_interrupt():
    """SIGTERM and SIGHUP behave as Ctrl-C for the duration of a command (main thread only);
    all three are raised where compiled code cannot swallow them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signal.SIGTERM: _raise_terminated, signal.SIGHUP: _raise_terminated}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored (nohup, &)
        handlers[signal.SIGINT] = _raise_interrupt
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _echo_notes(exc: BaseException) -> None:
    """The notes a command attached to an interrupt (``tune``'s resume hint), on stderr."""
    for note in getattr(exc, "__notes__", ()):
        click.echo(note, err=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    try:
        with _terminate_like_interrupt():
            try:
                cli.main(args=argv, prog_name="servetune", standalone_mode=False)
            except click.exceptions.Abort as exc:  # click wraps an interrupt in Abort
                if isinstance(exc.__cause__, KeyboardInterrupt):
                    raise exc.__cause__ from None
                raise
    except Terminated as exc:
        click.echo(f"servetune: stopped by {exc}", err=True)
        _echo_notes(exc)
        return 143
    except KeyboardInterrupt as exc:
        click.echo("servetune: interrupted", err=True)
        _echo_notes(exc)
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

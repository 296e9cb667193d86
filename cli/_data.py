"""``servetune data``: inspect the workspace's trace store."""

from __future__ import annotations

import click

from servetune.cli._main import Context, emit_json
from servetune.data import KINDS, TraceStore

__all__ = ["command"]


@click.group("data")
def command() -> None:
    """Inspect the trace store."""


@command.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object keyed by kind.")
@click.pass_obj
def list_traces(ctx: Context, as_json: bool) -> None:
    """Rows, runs, engines, models and hardware per trace kind."""
    summary = TraceStore.for_workspace(ctx.workspace).summary()
    if as_json:
        emit_json(summary)
        return
    click.echo(f"workspace: {ctx.workspace.root}")
    for kind in KINDS:
        s = summary[kind]
        click.echo(f"{kind:9s} {s['rows']:>10,d} rows  {len(s['runs']):>5d} runs  "
                   f"engines={','.join(s['engines']) or '-'}  models={','.join(s['models']) or '-'}"
                   f"  hardware={','.join(s['hardware']) or '-'}")

"""``servetune ingest``: source files into the workspace's trace store."""

from __future__ import annotations

import click

from servetune import InputError
from servetune.cli._main import Context, emit_json
from servetune.data import TraceStore
from servetune.data._ingest import ingest_paths, sample_paths
from servetune.data.adapters import default_registry

__all__ = ["command"]


@click.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--format", "format_", default=None, metavar="NAME",
              help="Source format (default: detected). See `servetune ingest --formats`.")
@click.option("--samples", is_flag=True, help="Ingest the real traces bundled with servetune.")
@click.option("--formats", "list_formats", is_flag=True, help="List the known formats and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def command(ctx: Context, paths: tuple[str, ...], format_: str | None, samples: bool,
            list_formats: bool, as_json: bool) -> None:
    """Ingest benchmark results and traces (PATHS) into the trace store."""
    registry = default_registry()
    if list_formats:
        for name in registry.names:
            click.echo(f"{name:20s} {registry.get(name).description}")
        return
    sources = list(paths) + ([str(p) for p in sample_paths()] if samples else [])
    if samples and not sample_paths():
        raise InputError("no bundled samples found in the installed package (data/samples/)")
    if not sources:
        raise InputError("nothing to ingest: give one or more PATHS, or --samples")
    store = TraceStore.for_workspace(ctx.workspace)
    results = ingest_paths(store, sources, registry, format=format_)
    if as_json:
        emit_json({"workspace": str(ctx.workspace.root),
                   "ingested": [r.to_dict() for r in results]})
        return
    for r in results:
        if r.skipped:
            click.echo(f"{r.source}: already ingested (sha256 {r.sha256[:12]}), skipped")
        else:
            rows = ", ".join(f"{n} {kind}" for kind, n in r.rows.items())
            click.echo(f"{r.source}: {rows} rows as {r.format} ({len(r.runs)} run(s))")

"""``servetune ingest``: source files into the workspace's trace store."""

from __future__ import annotations

import click

from servetune import InputError
from servetune.cli._main import Context, emit_json
from servetune.data import TraceStore
from servetune.data._ingest import SAMPLES_DIR, ingest_paths, sample_paths
from servetune.data.adapters import OVERRIDABLE, default_registry
from servetune.data.adapters._common import check_overrides

__all__ = ["command"]


@click.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--format", "format_", default=None, metavar="NAME",
              help="Source format (default: detected). See `servetune ingest --formats`.")
@click.option("--samples", is_flag=True, help="Ingest the real traces bundled with servetune.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Set an identity column on every row read from a foreign format, e.g. "
                   "--set hardware=H200 --set engine_version=0.11.0 (keys: "
                   + ", ".join(OVERRIDABLE) + ").")
@click.option("--formats", "list_formats", is_flag=True, help="List the known formats and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def command(ctx: Context, paths: tuple[str, ...], format_: str | None, samples: bool,
            settings: tuple[str, ...], list_formats: bool, as_json: bool) -> None:
    """Ingest benchmark results and traces (PATHS) into the trace store.

    Formats are detected from each file's content; request-arrival traces (Splitwise, Azure,
    Mooncake, BurstGPT) are workloads, not traces, and are refused with a pointer to
    --workload.
    """
    registry = default_registry(_parse_settings(settings))
    if list_formats:
        formats = [{"name": name, "description": registry.get(name).description}
                   for name in registry.names]
        if as_json:
            emit_json({"formats": formats})
            return
        for item in formats:
            click.echo(f"{item['name']:20s} {item['description']}")
        return
    sources = list(paths) + ([str(p) for p in sample_paths()] if samples else [])
    if samples and not sample_paths():
        raise InputError(f"no bundled sample traces: {SAMPLES_DIR} holds no *.parquet files "
                         "(they ship with the GPU collector); ingest your own files with "
                         "`servetune ingest PATH...`", field="--samples")
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


def _parse_settings(settings: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"expected KEY=VALUE, got {item!r}", field="--set")
        values[key.strip()] = value
    return check_overrides(values)

"""``servetune report``: a self-contained HTML report of a tuning study."""

from __future__ import annotations

import click

from servetune import ConfigError
from servetune.cli._main import Context, emit_json

__all__ = ["command"]


@click.command("report")
@click.argument("study")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Where to write the HTML (default: <study>/report.html).")
@click.option("--json", "as_json", is_flag=True, help="Print the report path as JSON.")
@click.pass_obj
def command(ctx: Context, study: str, output: str | None, as_json: bool) -> None:
    """Write the HTML report of STUDY (a name under <workspace>/studies/ or a folder)."""
    from pathlib import Path

    from servetune.tuner._report import write_report

    folder = Path(study)
    if not (folder / "study.json").exists():
        folder = ctx.workspace.studies_dir() / study
    if not (folder / "study.json").exists():
        found = ctx.workspace.studies_dir().glob("*/study.json")
        names = sorted(p.parent.name for p in found)
        raise ConfigError(f"no study {study!r} in {ctx.workspace.studies_dir()}; studies: "
                          f"{', '.join(names) or 'none'}")
    db = ctx.workspace.mlruns_dir() / "mlflow.db"  # the study's step model and its accuracy
    path = write_report(folder, output,
                        tracking_uri=ctx.workspace.tracking_uri if db.exists() else None)
    if as_json:
        emit_json({"study": folder.name, "report": str(path), "bytes": path.stat().st_size})
        return
    click.echo(str(path))

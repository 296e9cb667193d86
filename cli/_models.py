"""``servetune models``: the step-time models registered in the workspace."""

from __future__ import annotations

import click

from servetune.cli._main import Context, emit_json

__all__ = ["command"]


@click.group("models")
def command() -> None:
    """Inspect registered step-time models."""


@command.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of models.")
@click.pass_obj
def list_models(ctx: Context, as_json: bool) -> None:
    """Registered models with their versions, aliases and held-out metrics."""
    from servetune.models import list_registered
    from servetune.models._registry import client_for

    models = []
    if (ctx.workspace.mlruns_dir() / "mlflow.db").exists():
        models = list_registered(client_for(ctx.workspace.tracking_uri))
    if as_json:
        emit_json(models)
        return
    if not models:
        click.echo(f"no registered models in {ctx.workspace.root} (train one: servetune train)")
        return
    for model in models:
        click.echo(model["name"])
        for v in model["versions"]:
            m = v["metrics"]
            scores = "  ".join(f"{k} {m[k]:.3g}" for k in ("mape", "p90_ape", "r2", "extrap_mape")
                               if k in m)
            aliases = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
            click.echo(f"  v{v['version']}{aliases}  {v['feature_set'] or '-'}  {scores}")

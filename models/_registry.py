"""MLflow plumbing: one client per workspace (never the process-global tracking URI).

Every call goes through an explicit ``MlflowClient(tracking_uri=..., registry_uri=...)`` built
from the workspace, so two workspaces in one process never leak into each other.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from servetune import ModelError

__all__ = ["EXPERIMENT_NAME", "CHAMPION", "client_for", "ensure_experiment",
           "registered_model_name", "champion_version", "list_registered", "parse_model_uri",
           "ModelRef"]

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "servetune-step-time"
CHAMPION = "champion"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def client_for(tracking_uri: str):
    """An ``MlflowClient`` bound to one tracking/registry URI (SQLite in the workspace)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def workspace_client(workspace):
    """:func:`client_for` the workspace, creating ``mlruns/`` first."""
    workspace.mlruns_dir(ensure=True)
    return client_for(workspace.tracking_uri)


def ensure_experiment(client, artifact_root: str, name: str = EXPERIMENT_NAME) -> str:
    """The experiment id of ``name``, created with ``artifact_root`` as its artifact location."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root)


def _part(values: Iterable[str]) -> str:
    values = sorted({str(v) for v in values})
    if not values:
        return "unknown"
    return "+".join(values) if len(values) <= 3 else "multi"


def registered_model_name(engines: Iterable[str], models: Iterable[str],
                          hardware: Iterable[str]) -> str:
    """``step-time.<engine>.<model>.<hardware>``; several values join with ``+``."""
    name = ".".join(["step-time", _part(engines), _part(models), _part(hardware)])
    return _NAME_UNSAFE.sub("-", name)


def champion_version(client, name: str):
    """The model version holding the ``champion`` alias, or ``None``."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        """The URI again."""
        return f"models:/{self.name}@{self.alias}" if self.alias else \
            f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> ModelRef:
    """Parse a registry URI; raise :class:`ModelError` with the accepted forms otherwise."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/@]+)|/(\d+))", uri.strip())
    if not match:
        raise ModelError(f"cannot read model URI {uri!r}; expected models:/NAME@ALIAS or "
                         "models:/NAME/VERSION (see `servetune models ls`)")
    return ModelRef(name=match.group(1), alias=match.group(2), version=match.group(3))


def list_registered(client) -> list[dict]:
    """Every registered model with its versions, aliases and logged metrics, newest first."""
    out = []
    for model in client.search_registered_models(max_results=1000):
        aliases = dict(getattr(model, "aliases", {}) or {})
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        versions = []
        for mv in client.search_model_versions(f"name='{model.name}'", max_results=1000):
            metrics = {k[len("metric."):]: float(v) for k, v in (mv.tags or {}).items()
                       if k.startswith("metric.")}
            versions.append({
                "version": int(mv.version), "run_id": mv.run_id,
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "created": mv.creation_timestamp,
                "feature_set": (mv.tags or {}).get("feature_set"),
                "metrics": metrics,
            })
        versions.sort(key=lambda v: -v["version"])
        out.append({"name": model.name, "aliases": {k: int(v) for k, v in aliases.items()},
                    "versions": versions})
    out.sort(key=lambda m: m["name"])
    return out

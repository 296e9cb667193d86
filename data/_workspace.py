"""The user's workspace: where traces, MLflow runs and studies live.

Resolution order: an explicit directory (``--workspace``), else ``$SERVETUNE_WORKSPACE``, else the
current directory. Nothing is created until a sub-directory is asked for with ``ensure=True``.

Example:
    >>> ws = Workspace.resolve("/tmp/ws")
    >>> ws.tracking_uri
    'sqlite:////tmp/ws/mlruns/mlflow.db'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Workspace", "WORKSPACE_ENV"]

WORKSPACE_ENV = "SERVETUNE_WORKSPACE"


@dataclass(frozen=True)
class Workspace:
    """A workspace directory; a value object that does no I/O when built."""

    root: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike | None = None,
                environ: dict[str, str] | None = None) -> "Workspace":
        """The workspace named by ``explicit``, else ``$SERVETUNE_WORKSPACE``, else the cwd."""
        env = os.environ if environ is None else environ
        chosen = explicit if explicit else env.get(WORKSPACE_ENV) or os.getcwd()
        return cls(Path(chosen).expanduser().absolute())

    def traces_dir(self, ensure: bool = False) -> Path:
        """``<root>/traces``: the Parquet trace store."""
        return self._sub("traces", ensure)

    def mlruns_dir(self, ensure: bool = False) -> Path:
        """``<root>/mlruns``: the MLflow SQLite database and artifacts."""
        return self._sub("mlruns", ensure)

    def studies_dir(self, ensure: bool = False) -> Path:
        """``<root>/studies``: one folder per tuning study."""
        return self._sub("studies", ensure)

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI (SQLite inside ``mlruns/``; MLflow 3 refuses its file store)."""
        return f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        """MLflow artifact root inside ``mlruns/``."""
        return (self.root / "mlruns" / "artifacts").as_uri()

    def _sub(self, name: str, ensure: bool) -> Path:
        path = self.root / name
        if ensure:
            path.mkdir(parents=True, exist_ok=True)
        return path

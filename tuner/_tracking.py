"""One MLflow parent run per study: parameters, per-iteration metrics, best config, plots.

Uses an explicit ``MlflowClient`` (no process-wide active run). The run id is kept in the
study's checkpoint and the run carries the tag ``servetune.study_uid``, so a resumed study —
even one killed before its first checkpoint — keeps logging to the same run.

Example:
    >>> tracker = StudyTracker(ws.tracking_uri, ws.artifact_root)  # doctest: +SKIP
    >>> tracker.start(study); study.run(ev, on_iteration=tracker.log_iteration)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

from servetune.data.engines import REDACTED, is_secret_name, redact_document

__all__ = ["StudyTracker", "EXPERIMENT", "redacted_copy", "secret_values"]

log = logging.getLogger(__name__)

EXPERIMENT = "servetune-tuning"
_UID_TAG = "servetune.study_uid"


def secret_values(document) -> set[str]:
    """Every value held by a secret ``env.NAME`` entry of a JSON-like document, at any depth
    (choices of a space parameter included), as text."""
    found: set[str] = set()

    def walk(value, secret: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, secret or (isinstance(k, str) and k.startswith("env.")
                                   and is_secret_name(k[4:])))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, secret)
        elif secret and value not in (None, "", REDACTED) and not isinstance(value, bool):
            found.add(str(value))

    walk(document, False)
    return found


def redacted_copy(path: Path, directory: Path, secrets: set[str]) -> Path:
    """``path`` copied into ``directory`` with secret ``env.*`` values replaced by ``***``: JSON
    and JSON-lines documents through :func:`redact_document`, then any remaining occurrence of a
    value in ``secrets`` (tables, launch lines) replaced in the text."""
    out = directory / "redacted" / path.name
    out.parent.mkdir(exist_ok=True)
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        text = json.dumps(redact_document(json.loads(text)), indent=1, default=str)
    elif path.suffix == ".jsonl":
        text = "".join(json.dumps(redact_document(json.loads(line)), default=str) + "\n"
                       for line in text.splitlines() if line.strip())
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    out.write_text(text)
    return out


class StudyTracker:
    """Logs a study to MLflow. Construction does no I/O; :meth:`start` opens the run."""

    def __init__(self, tracking_uri: str, artifact_root: str | None = None,
                 experiment: str = EXPERIMENT) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.experiment = experiment
        self.run_id: str | None = None
        self._client = None

    def _client_(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def start(self, study, extra_params: dict | None = None) -> str:
        """Open (or reopen) the study's parent run and log its parameters."""
        client = self._client_()
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None else
                         client.create_experiment(self.experiment,
                                                  artifact_location=self.artifact_root))
        run_id = study.tracking_run_id
        if run_id is None:
            found = client.search_runs([experiment_id],
                                       filter_string=f"tags.`{_UID_TAG}` = '{study.spec.uid}'",
                                       max_results=1)
            run_id = found[0].info.run_id if found else None
        if run_id is None:
            run = client.create_run(experiment_id, run_name=study.spec.name,
                                    tags={_UID_TAG: study.spec.uid,
                                          "servetune.kind": "study",
                                          "servetune.engine": study.space.engine})
            run_id = run.info.run_id
            params = {"study": study.spec.name, "space": study.space.name,
                      "engine": study.space.engine, "space_fingerprint":
                      study.space.fingerprint(), "objective": study.objective.spec(),
                      "seed": study.spec.seed,
                      **{f"optimizer.{k}": v for k, v in study.optimizer.params().items()},
                      **{f"evaluator.{k}": v for k, v in study.spec.evaluator.items()},
                      **(extra_params or {})}
            from mlflow.entities import Param

            params = redact_document(params)
            client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
        else:
            client.update_run(run_id, status="RUNNING")
        study.tracking_run_id = run_id
        self.run_id = run_id
        return run_id

    def log_iteration(self, study, batch) -> None:
        """Per-iteration metrics at step = iteration (best so far, iteration best/mean, ...)."""
        from mlflow.entities import Metric

        it = batch[0].iteration if batch else study.iteration - 1
        scores = [r.score for r in batch if r.status == "ok"]
        best = study.best()
        values = {
            "best_objective": best.score if best else None,
            "iteration_best_objective": max(scores) if scores else None,
            "iteration_mean_objective": sum(scores) / len(scores) if scores else None,
            "feasible_fraction": sum(r.status == "ok" for r in batch) / max(len(batch), 1),
            "evaluations": float(len(study.records)),
            "distinct_configs": float(sum(not r.cached for r in study.records
                                          if r.status == "ok")),
        }
        if best:
            for key in ("goodput_rps", "output_throughput_tok_s", "ttft_p90_ms", "tpot_p90_ms"):
                if best.metrics.get(key) is not None:
                    values[f"best_{key}"] = float(best.metrics[key])
        metrics = [Metric(k, float(v), 0, it) for k, v in values.items()
                   if v is not None and math.isfinite(v)]
        self._client_().log_batch(self.run_id, metrics=metrics)

    def abort(self) -> None:
        """Mark the run failed (a study that ended without a result)."""
        if self.run_id is not None:
            self._client_().set_terminated(self.run_id, status="FAILED")

    def finish(self, study, candidates: list[dict], plots: dict[str, bytes],
               files: list[Path] = ()) -> None:
        """Best configuration, candidates, plots and study files as artifacts; run finished."""
        client = self._client_()
        best = study.best()
        if best is not None:
            from mlflow.entities import Metric, Param

            params = [Param(f"best.{k}", str(v)[:500])
                      for k, v in redact_document(best.config).items()]
            existing = client.get_run(self.run_id).data.params
            params = [p for p in params if p.key not in existing]
            client.log_batch(self.run_id, params=params,
                             metrics=[Metric("final_best_objective", float(best.score), 0,
                                             study.iteration)])
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "best_config.json").write_text(json.dumps(
                redact_document(best.config) if best else None, indent=1, default=str))
            client.log_artifact(self.run_id, str(tmp / "best_config.json"))
            for name, png in plots.items():
                path = tmp / f"{name}.png"
                path.write_bytes(png)
                client.log_artifact(self.run_id, str(path), artifact_path="plots")
            secrets = secret_values([study.space.to_dict(), candidates,
                                     [r.config for r in study.records]])
            for path in files:
                if Path(path).exists():
                    client.log_artifact(self.run_id,
                                        str(redacted_copy(Path(path), tmp, secrets)),
                                        artifact_path="study")
        client.set_terminated(self.run_id, status="FINISHED")

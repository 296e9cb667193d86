"""Train a step-time model from the trace store, evaluate it honestly, log and register it.

One call of :func:`train_step_time_model` is one MLflow run:

1. load measured steps (with the run knobs joined) matching the filters; hash them (lineage);
2. hold out test runs by a salted hash of their run id (stable across trainings);
3. search a few hyperparameter settings by grouped CV on the training runs only;
4. fit on the training runs (early stopping on held-out training runs, then refit);
   record the training domain (models._domain: step ranges, knob combinations, cache sizes)
   and the engine constants (models._engine_constants: the CUDA-graph capture cost fitted on
   the training runs' capture steps, GPU memory, model weights, KV bytes per token);
5. score on the test runs (MAPE, p50/p90/p99 APE, R², per-run errors) and run the extrapolation
   check (train on steps up to the 80th token percentile, test above it);
6. log params, lineage, metrics, plots and the model (signature + input example), register a
   version, and move ``champion`` only if the new model beats the current champion on the same
   test runs.

Example:
    >>> from servetune.data import Workspace
    >>> result = train_step_time_model(Workspace.resolve("/tmp/ws"))   # doctest: +SKIP
    >>> result.model_uri, result.champion, round(result.metrics["mape"], 2)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from servetune._progress import progress as progress_lines

from servetune import ConfigError, InputError, ModelError, ServetuneError
from servetune.data import TraceStore, schema_for
from servetune.data._schemas import PARTITION_COLUMNS, partition_value
from servetune.features import (
    DEFAULT_FEATURE_SET,
    KNOB_COLUMNS,
    RAW_COLUMNS,
    RUN_KNOB_COLUMNS,
    add_previous_step,
    get_feature_set,
    graph_captured,
    join_knobs,
)
from servetune.models._domain import DOMAIN_ARTIFACT, TrainingDomain
from servetune.models._engine_constants import ENGINE_CONSTANTS_ARTIFACT, EngineConstants
from servetune.models._interval import INTERVAL_ARTIFACT, StepTimeInterval, out_of_fold_ratios
from servetune.models._estimator import StepTimeRegressor
from servetune.models._evaluation import (
    extrapolation_split,
    held_out_runs,
    per_run_errors,
    regression_metrics,
)
from servetune.models._registry import (
    CHAMPION,
    champion_version,
    ensure_experiment,
    registered_model_name,
    workspace_client,
)
from servetune.models._search import search_hyperparameters
from servetune.models import _pyfunc_loader
from servetune.models._step_time_model import (
    MODEL_ARTIFACT,
    StepTimeModel,
    model_metadata,
    use_step_time_pyfunc,
)

__all__ = ["TrainConfig", "TrainResult", "load_training_frame", "train_step_time_model",
           "ensure_champion", "champion_for_engine", "step_model_for_engine", "model_engine",
           "parse_where",
           "training_domain", "training_engine_constants"]

log = logging.getLogger(__name__)

_STEP_COLUMNS = ["run_id", *PARTITION_COLUMNS, "source", "step_index", "duration_ms",
                 *RAW_COLUMNS, "block_size", "tp_size", "extra"]
_RUN_COLUMNS = ["run_id", *PARTITION_COLUMNS, *RUN_KNOB_COLUMNS]


@dataclass(frozen=True)
class TrainConfig:
    """How one training runs (all logged as MLflow params).

    Attributes:
        feature_set: registered feature set name.
        test_fraction: share of runs held out for testing (by a salted hash of the run id).
        holdout_salt: salt of that hash; models are comparable only under the same salt.
        n_trials: settings tried by the search (1: the defaults only, no search).
        candidate_feature_sets: other feature sets the search tries (before hyperparameters).
        cv_splits: GroupKFold splits over the training runs for the search.
        search_budget_s: stop the search after this many seconds.
        extrapolation_quantile: token percentile of the extrapolation check.
        interval_level, interval_splits: the run-level prediction interval's probability and
            its out-of-fold splits (models._interval).
        calibrate_from: a model URI (``models:/NAME@champion``) to calibrate instead of training
            from scratch: its trees are kept and a few shallow trees learn its error on the
            selected steps (per-host calibration: ``--where hardware=...``). No search; the
            estimator starts from ``CALIBRATION_PARAMS``; the domain is the union of both.
        source: which steps to train on: ``auto`` (each run's recorded steps, else the
            steps rebuilt from its token timings, e.g. a ``servetune validate`` measurement),
            ``measured`` or ``reconstructed``; never the simulator's own output.
        n_jobs: XGBoost threads.
        seed: seeds every random choice.
        estimator_params: StepTimeRegressor parameters to start from (the search may override
            max_depth, learning_rate, min_child_weight, subsample).
    """

    feature_set: str = DEFAULT_FEATURE_SET
    test_fraction: float = 0.2
    holdout_salt: str = "servetune-holdout-v1"
    n_trials: int = 8
    candidate_feature_sets: tuple[str, ...] = ("step_v4", "raw_v2", "step_v3", "raw_v1")
    cv_splits: int = 3
    search_budget_s: float = 60.0
    extrapolation_quantile: float = 0.8
    interval_level: float = 0.8
    interval_splits: int = 5
    calibrate_from: str | None = None
    source: str = "auto"
    n_jobs: int = 1
    seed: int = 0
    estimator_params: Mapping[str, object] = field(default_factory=dict)


# Starting estimator parameters of a calibration (``TrainConfig.calibrate_from``): few shallow,
# strongly regularised trees with a small step, stopped early on held-out runs of the new host,
# so the correction stays smooth where the host's runs are few.
CALIBRATION_PARAMS = {"n_estimators": 400, "learning_rate": 0.05, "max_depth": 3,
                      "min_child_weight": 20.0, "reg_lambda": 10.0, "subsample": 0.8,
                      "early_stopping_rounds": 25, "validation_fraction": 0.25}


@dataclass
class TrainResult:
    """What one training produced (the CLI prints it as JSON)."""

    run_id: str
    model_uri: str
    registered_model: str
    version: int
    champion: bool
    metrics: dict[str, float]
    champion_before: dict | None
    lineage: dict
    params: dict
    seconds: float
    per_run: pd.DataFrame = field(repr=False, default=None)
    search_trials: pd.DataFrame | None = field(repr=False, default=None)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        out = {k: v for k, v in asdict(self).items() if k not in ("per_run", "search_trials")}
        out["search_trials"] = ([] if self.search_trials is None else
                                self.search_trials.to_dict(orient="records"))
        out["champion_uri"] = f"models:/{self.registered_model}@{CHAMPION}"
        return out


def parse_where(items) -> dict[str, object]:
    """``["engine=x", "async_batching=true"]`` -> typed filters (steps or runs columns)."""
    steps, runs = schema_for("steps"), schema_for("runs")
    out: dict[str, object] = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"expected key=value, got {item!r}", field="--where")
        schema = steps if key in steps.names else runs if key in runs.names else None
        if schema is None:
            raise InputError(f"unknown filter column {key!r}; expected a steps or runs column "
                             f"such as engine, model, hardware, run_id, block_size",
                             field="--where")
        out[key] = _coerce(text.strip(), schema.field(key).type, key)
    return out


def _coerce(text: str, dtype, key: str):
    import pyarrow as pa

    try:
        if pa.types.is_boolean(dtype):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if pa.types.is_integer(dtype):
            return int(text)
        if pa.types.is_floating(dtype):
            return float(text)
    except ValueError:
        raise InputError(f"expected a value of type {dtype}, got {text!r}",
                         field=f"--where {key}") from None
    return text


#: the step sources a model trains on: recorded (engine log, collector) or rebuilt from timings
TRAINING_SOURCES = ("measured", "reconstructed")


def source_values(source: str) -> list[str]:
    """The ``steps.source`` values of a training ``source`` (``auto``: both)."""
    if source == "auto":
        return list(TRAINING_SOURCES)
    if source not in TRAINING_SOURCES:
        raise ConfigError(f"unknown step source {source!r}; expected auto, "
                          f"{', '.join(TRAINING_SOURCES)}")
    return [source]


def load_training_frame(store: TraceStore, where: Mapping[str, object] | None = None, *,
                        source: str = "auto") -> tuple[pd.DataFrame, dict]:
    """Steps joined with their run knobs, sorted by (run, step), and their lineage record.

    ``where`` filters on partition keys, ``run_id``, steps columns, or runs columns (a runs
    filter keeps the steps of the matching runs).
    """
    frame, _, lineage = _load_frames(store, where, source=source)
    return frame, lineage


def _load_frames(store: TraceStore, where: Mapping[str, object] | None, *, source: str
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """:func:`load_training_frame`'s ``(frame, lineage)`` with, in the middle, the excluded
    graph-capture steps (same columns plus ``extra``) that the capture-cost fit uses."""
    where = dict(where or {})
    part = {k: partition_value(str(where.pop(k))) for k in list(where) if k in PARTITION_COLUMNS}
    run_ids = where.pop("run_id", None)
    step_names = set(schema_for("steps").names)
    step_where = {k: v for k, v in where.items() if k in step_names}
    run_where = {k: v for k, v in where.items() if k not in step_names}
    runs = store.query("runs", columns=_RUN_COLUMNS, **part)
    if run_where:
        selected = store.query("runs", columns=["run_id"], where=run_where, **part)
        run_ids = sorted(set(selected.run_id) & ({run_ids} if run_ids else set(selected.run_id)))
        if not run_ids:
            raise InputError(f"no runs match {run_where}", field="--where")
    steps = store.query("steps", columns=_STEP_COLUMNS, run_id=run_ids,
                        where={**step_where, "source": source_values(source)}, **part)
    if source == "auto":  # a run's recorded steps win over the ones rebuilt from its timings
        recorded = set(steps.run_id[steps.source == "measured"])
        steps = steps[(steps.source == "measured") | ~steps.run_id.isin(recorded)]
    filters = {**part, **({"run_id": run_ids} if run_ids else {}), **step_where, **run_where,
               "source": source}
    if steps.empty:
        kind = "measured or reconstructed" if source == "auto" else source
        raise ModelError(f"no {kind} step traces match {filters or 'the store'}; ingest "
                         "some with `servetune ingest` (or `servetune ingest --samples`)")
    runs = runs.drop_duplicates("run_id")
    # the previous step is taken before any step is dropped: it is the batch the engine ran
    frame = add_previous_step(join_knobs(steps, runs[["run_id", *RUN_KNOB_COLUMNS]]))
    bad = ~(frame["duration_ms"] > 0)
    if bad.any():
        log.warning("dropping %d steps with a zero duration", int(bad.sum()))
    # A step that captured a CUDA graph pays a one-off compile cost that no steady-state step
    # (and no simulated step) has; the collector flags it in ``extra``.
    capture = pd.Series(graph_captured(frame), index=frame.index)
    if capture.any():
        log.info("excluding %d graph-capture (warm-up) steps", int(capture.sum()))
    captures = frame[~bad & capture].sort_values(["run_id", "step_index"], kind="stable")
    frame = frame[~bad & ~capture].drop(columns=["extra"])
    frame = frame.sort_values(["run_id", "step_index"], kind="stable").reset_index(drop=True)
    hashed = pd.util.hash_pandas_object(frame[["run_id", "step_index", "duration_ms",
                                               *RAW_COLUMNS, *KNOB_COLUMNS]], index=False)
    lineage = {
        "filters": filters,
        "rows": int(len(frame)),
        "dropped_zero_duration": int(bad.sum()),
        "excluded_graph_capture_steps": int(capture.sum()),
        "runs": int(frame.run_id.nunique()),
        "engines": sorted(frame.engine.unique()),
        "models": sorted(frame.model.unique()),
        "hardware": sorted(frame.hardware.unique()),
        "content_sha256": hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest(),
    }
    return frame, captures.reset_index(drop=True), lineage


def train_step_time_model(workspace, where: Mapping[str, object] | None = None,
                          config: TrainConfig | None = None, *,
                          progress: bool | None = None) -> TrainResult:
    """Train, evaluate, log and register one step-time model from the workspace's store."""
    config = config or TrainConfig()
    started = time.perf_counter()
    stages = progress_lines(total=6, desc="train", unit="stage", delay=0.5,
                            enabled=progress is not False)
    with stages:
        stages.set_postfix_str("loading steps")
        store = TraceStore.for_workspace(workspace)
        frame, captures, lineage = _load_frames(store, where, source=config.source)
        y = frame["duration_ms"].to_numpy(dtype=np.float64)
        groups = frame["run_id"].to_numpy()
        test_runs = held_out_runs(groups, config.test_fraction, config.holdout_salt)
        test = np.isin(groups, test_runs)
        train, X_test = frame[~test], frame[test]
        domain = training_domain(store, train)
        init = None
        if config.calibrate_from:
            init = StepTimeModel.load(config.calibrate_from, tracking_uri=workspace.tracking_uri)
            lineage["calibrated_from"] = {"uri": config.calibrate_from, "name": init.name,
                                          "version": init.version, "run_id": init.run_id}
            if init.domain is not None:
                domain = domain.union(init.domain)
        stages.update(1)

        stages.set_postfix_str(f"search ({config.n_trials} trials)")
        base = StepTimeRegressor(**{"feature_set": config.feature_set, "n_jobs": config.n_jobs,
                                    "random_state": config.seed, **config.estimator_params})
        if init is not None:
            base.set_params(**{**CALIBRATION_PARAMS, **config.estimator_params,
                               "feature_set": init.feature_set.name,
                               "log_target": bool(init.log_target), "init_model": init})
        trials = None
        n_train_runs = int(np.unique(groups[~test]).size)
        if init is None and config.n_trials > 1 and n_train_runs >= max(config.cv_splits, 2):
            search = search_hyperparameters(
                base, train, y[~test], groups[~test], n_trials=config.n_trials,
                n_splits=config.cv_splits, seed=config.seed, time_budget_s=config.search_budget_s,
                feature_sets=config.candidate_feature_sets)
            base.set_params(**search.best_params)
            trials = search.trials
        stages.update(1)

        stages.set_postfix_str("fitting")
        fit_started = time.perf_counter()
        model = clone(base).fit(train, y[~test], groups=groups[~test])
        fit_seconds = time.perf_counter() - fit_started
        constants = training_engine_constants(store, model, captures, groups[~test])
        if init is not None:  # what the calibration runs do not record, the base model knows
            constants = constants.filled_from(init.engine_constants)
        stages.update(1)

        stages.set_postfix_str("evaluating held-out runs")
        pred = model.predict(X_test)
        metrics = regression_metrics(y[test], pred)
        per_run = per_run_errors(groups[test], y[test], pred)
        extrap = _extrapolation(base, frame, y, groups, test, config.extrapolation_quantile)
        stages.set_postfix_str("prediction interval (out of fold)")
        interval = _interval(base, frame, y, groups, config)
        if interval is not None:
            metrics.update({"interval_low": interval.low, "interval_high": interval.high,
                            "interval_median": interval.median})
        metrics.update({f"extrap_{k}": v for k, v in extrap.items()})
        if trials is not None:
            best = trials.loc[trials.cv_mape.idxmin()]
            metrics["cv_mape"] = float(best.cv_mape)
            metrics["cv_p90_ape"] = float(best.cv_p90_ape)
        metrics.update({"fit_seconds": fit_seconds, "n_trees": float(model.n_estimators_),
                        "train_steps": float((~test).sum()),
                        "test_runs": float(len(test_runs)),
                        "train_runs": float(n_train_runs)})
        stages.update(2)

        stages.set_postfix_str("logging to MLflow")
        result = _log_and_register(workspace, config, model, frame, test, pred, metrics,
                                   per_run, lineage, test_runs, trials, started, domain,
                                   constants, interval)
        stages.update(1)
    return result


def training_domain(store: TraceStore, train: pd.DataFrame) -> TrainingDomain:
    """The :class:`TrainingDomain` of the training steps: their knobs (as joined for training)
    and each run's KV cache size from the ``runs`` table's ``num_blocks``."""
    runs = train.groupby("run_id", sort=True)[list(KNOB_COLUMNS)].first().reset_index()
    blocks = store.query("runs", columns=["run_id", "num_blocks"],
                         run_id=sorted(runs["run_id"].astype(str)))
    runs = runs.merge(blocks.drop_duplicates("run_id"), on="run_id", how="left")
    return TrainingDomain.from_training(train, runs)


def training_engine_constants(store: TraceStore, model: StepTimeRegressor,
                              captures: pd.DataFrame, train_run_ids) -> EngineConstants:
    """The :class:`EngineConstants` of the training runs: the capture cost fitted on their
    graph-capture steps (measured duration minus ``model``'s prediction; transformers runs whose
    recorded configuration gives the padding and cache sizes), and the GPU and model facts
    their ``runs`` rows record."""
    from servetune.data.engines import TRANSFORMERS_CB, get_engine

    ids = sorted({str(r) for r in train_run_ids})
    runs = store.query("runs", columns=["run_id", "engine", "config", "provenance", "gpu_name",
                                        "tp_size"], run_id=ids).drop_duplicates("run_id")
    needed = ("q_padding_interval_size", "kv_padding_interval_size", "max_batch_tokens",
              "num_blocks", "block_size", "use_async_batching")

    def fits(row) -> bool:
        try:
            config = json.loads(row.config) if isinstance(row.config, str) else {}
            engine = get_engine(str(row.engine)).name
        except (ValueError, ServetuneError):
            return False
        return engine == TRANSFORMERS_CB.name and all(config.get(k) is not None for k in needed)

    usable = {r.run_id for r in runs.itertuples() if fits(r)}
    mine = captures[captures["run_id"].isin(usable)]
    if len(mine) < len(captures[captures["run_id"].isin(ids)]):
        log.info("capture-cost fit: %d of the training runs' graph-capture steps are in runs "
                 "without a transformers configuration and are left out",
                 int(captures["run_id"].isin(ids).sum()) - len(mine))
    predicted = model.predict(mine) if len(mine) else np.zeros(0)
    steps = store.query("steps", columns=["run_id", "step_index", "num_seqs", "prefill_tokens",
                                          "duration_ms", "extra"], run_id=ids)
    return EngineConstants.from_training(mine, predicted, runs, steps=steps)


def _extrapolation(estimator, frame: pd.DataFrame, y: np.ndarray, groups: np.ndarray,
                   test: np.ndarray, quantile: float) -> dict[str, float]:
    """Train on training-run steps up to the token quantile; test on test-run steps above it."""
    above, cut = extrapolation_split(frame, quantile)
    train_mask, test_mask = ~test & ~above, test & above
    if not test_mask.any() or np.unique(groups[train_mask]).size < 1:
        log.warning("extrapolation check skipped: no held-out steps above %g tokens", cut)
        return {}
    model = clone(estimator).set_params(refit=False).fit(frame[train_mask], y[train_mask],
                                                         groups=groups[train_mask])
    m = regression_metrics(y[test_mask], model.predict(frame[test_mask]))
    return {"mape": m["mape"], "p90_ape": m["p90_ape"], "r2": m["r2"],
            "token_cut": cut, "n_steps": m["n_steps"]}


def _interval(estimator, frame: pd.DataFrame, y: np.ndarray, groups: np.ndarray,
              config: TrainConfig) -> StepTimeInterval | None:
    """The run-level prediction interval (models._interval), None with too few runs."""
    if np.unique(groups).size < max(config.interval_splits, 3):
        log.warning("no prediction interval: %d runs, need at least %d",
                    np.unique(groups).size, max(config.interval_splits, 3))
        return None
    ratios = out_of_fold_ratios(estimator, frame, y, groups, config.interval_splits)
    return StepTimeInterval.from_ratios(ratios.to_numpy(), config.interval_level)


def _log_and_register(workspace, config: TrainConfig, model: StepTimeRegressor,
                      frame: pd.DataFrame, test: np.ndarray, pred: np.ndarray,
                      metrics: dict, per_run: pd.DataFrame, lineage: dict, test_runs: list[str],
                      trials: pd.DataFrame | None, started: float,
                      domain: TrainingDomain | None = None,
                      constants: EngineConstants | None = None,
                      interval: StepTimeInterval | None = None) -> TrainResult:
    import mlflow
    import xgboost as xgb
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.models import infer_signature

    from servetune.models._plots import (
        error_by_batch_size,
        feature_importance_plot,
        predicted_vs_measured,
    )

    fs = get_feature_set(model.feature_set)
    client = workspace_client(workspace)
    experiment_id = ensure_experiment(client, workspace.artifact_root)
    name = registered_model_name(lineage["engines"], lineage["models"], lineage["hardware"])
    run = client.create_run(experiment_id, run_name=f"train-{name}",
                            tags={"servetune.kind": "step-time-training"})
    run_id = run.info.run_id
    try:
        params = {**{k: v for k, v in model.get_params().items() if k != "init_model"},
                  **{f"train.{k}": v for k, v in asdict(config).items()}}
        tags = {"feature_set": fs.name, "feature_set_version": str(fs.version),
                "feature_names": ",".join(fs.feature_names),
                "data.content_sha256": lineage["content_sha256"],
                "data.filters": json.dumps(lineage["filters"], sort_keys=True, default=str),
                "data.rows": str(lineage["rows"]), "data.runs": str(lineage["runs"]),
                "registered_model": name}
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                     if v is not None and np.isfinite(v)],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()])
        client.log_dict(run_id, {**lineage, "test_runs": test_runs,
                                 "train_runs": sorted(set(frame.run_id[~test]))},
                        "lineage.json")
        if domain is not None:
            client.log_dict(run_id, domain.to_dict(), DOMAIN_ARTIFACT)
        if constants is not None:
            client.log_dict(run_id, constants.to_dict(), ENGINE_CONSTANTS_ARTIFACT)
        if interval is not None:
            client.log_dict(run_id, interval.to_dict(), INTERVAL_ARTIFACT)
        client.log_text(run_id, per_run.to_csv(index=False), "per_run_errors.csv")
        if trials is not None:
            client.log_text(run_id, trials.to_csv(index=False), "search_trials.csv")
        y_test = frame["duration_ms"].to_numpy()[test]
        client.log_figure(run_id, predicted_vs_measured(
            y_test, pred, f"held-out runs: MAPE {metrics['mape']:.2f}%"),
            "plots/predicted_vs_measured.png")
        client.log_figure(run_id, error_by_batch_size(
            frame["num_seqs"].to_numpy()[test], y_test, pred), "plots/error_by_batch_size.png")
        client.log_figure(run_id, feature_importance_plot(model.feature_importance()),
                          "plots/feature_importance.png")

        example = fs.dataframe(frame[test].head(5))
        signature = infer_signature(example, model.predict_margin(frame[test].head(5)))
        with tempfile.TemporaryDirectory(prefix="servetune-log-") as tmp:
            path = Path(tmp) / MODEL_ARTIFACT
            mlflow.xgboost.save_model(
                model.booster_, str(path), signature=signature, input_example=example,
                pip_requirements=[f"xgboost=={xgb.__version__}"],
                metadata=model_metadata(fs, model.log_target, model.base_coef_,
                                        model.base_intercept_),
                code_paths=[_pyfunc_loader.__file__])
            use_step_time_pyfunc(path)
            client.log_artifacts(run_id, str(path), MODEL_ARTIFACT)

        version = _register(client, name, run_id, fs, metrics, lineage)
        champion, before = _maybe_promote(client, workspace, name, version, frame[test],
                                          metrics, config)
        client.set_tag(run_id, "champion", str(champion).lower())
        if before is not None:
            client.log_metric(run_id, "champion_before_mape", before["mape"])
        client.log_metric(run_id, "total_seconds", time.perf_counter() - started)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return TrainResult(run_id=run_id, model_uri=f"models:/{name}/{version}",
                       registered_model=name, version=int(version), champion=champion,
                       metrics=metrics, champion_before=before, lineage=lineage,
                       params={k: v for k, v in model.get_params().items()
                               if k != "init_model"},
                       seconds=time.perf_counter() - started, per_run=per_run,
                       search_trials=trials)


def _register(client, name: str, run_id: str, fs, metrics: dict, lineage: dict) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="servetune step-time model: log(duration_ms) from step features")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {"feature_set": fs.name, "feature_set_version": str(fs.version),
            "data.content_sha256": lineage["content_sha256"]}
    tags.update({f"metric.{k}": f"{metrics[k]:.6g}" for k in
                 ("mape", "p50_ape", "p90_ape", "r2", "extrap_mape", "cv_mape")
                 if k in metrics})
    mv = client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_ARTIFACT}",
                                     run_id=run_id, tags=tags)
    return str(mv.version)


def _maybe_promote(client, workspace, name: str, version: str, test_frame: pd.DataFrame,
                   metrics: dict, config: TrainConfig) -> tuple[bool, dict | None]:
    """Move ``champion`` to ``version`` unless the current champion is at least as good on the
    same held-out steps."""
    current = champion_version(client, name)
    if current is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, None
    salt = client.get_run(current.run_id).data.params.get("train.holdout_salt")
    try:
        champ = StepTimeModel.load(f"models:/{name}/{current.version}",
                                   tracking_uri=workspace.tracking_uri)
        champ_metrics = regression_metrics(test_frame["duration_ms"].to_numpy(),
                                           champ.predict(test_frame))
    except ModelError as exc:
        log.warning("current champion v%s cannot be evaluated (%s); promoting v%s",
                    current.version, exc, version)
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, {"version": int(current.version), "error": str(exc)}
    if salt != config.holdout_salt:
        log.warning("champion v%s used another hold-out salt (%s); it may have trained on some "
                    "of these test runs", current.version, salt)
    before = {"version": int(current.version), "mape": champ_metrics["mape"],
              "p90_ape": champ_metrics["p90_ape"], "r2": champ_metrics["r2"]}
    if metrics["mape"] < champ_metrics["mape"]:
        client.set_registered_model_alias(name, CHAMPION, version)
        log.info("v%s beats champion v%s on the held-out runs (MAPE %.3f%% < %.3f%%)", version,
                 current.version, metrics["mape"], champ_metrics["mape"])
        return True, before
    log.info("champion v%s stays (MAPE %.3f%% <= %.3f%%)", current.version,
             champ_metrics["mape"], metrics["mape"])
    return False, before


def ensure_champion(workspace, where: Mapping[str, object] | None = None, *,
                    config: TrainConfig | None = None, progress: bool | None = None) -> str:
    """The URI ``models:/NAME@champion`` of the store's data, training one if none exists.

    Ingests the bundled samples first when the store has no step traces.
    """
    store = TraceStore.for_workspace(workspace)
    ingest_samples_if_empty(store)
    part = {k: v for k, v in (where or {}).items() if k in PARTITION_COLUMNS}
    # the model is named after the data it trains on: measured steps only (never the
    # simulator's own output, which a workspace may also hold)
    source = (config or TrainConfig()).source
    measured = store.query_table(
        "steps", columns=list(PARTITION_COLUMNS), where={"source": source_values(source)},
        **{k: partition_value(str(v)) for k, v in part.items()})
    if measured.num_rows:
        distinct = {c: sorted(set(measured.column(c).unique().to_pylist()))
                    for c in PARTITION_COLUMNS}
        name = registered_model_name(
            [part["engine"]] if "engine" in part else distinct["engine"],
            [part["model"]] if "model" in part else distinct["model"],
            [part["hardware"]] if "hardware" in part else distinct["hardware"])
        if champion_version(workspace_client(workspace), name) is not None:
            return f"models:/{name}@{CHAMPION}"
        if "hardware" not in part and len(distinct["hardware"]) > 1:
            log.warning(
                "training the champion %s on the steps of %d hardware together (%s): one model "
                "for all of them, without a feature that tells them apart. For one host, "
                "calibrate a model on it (servetune train --calibrate-from MODEL_URI --where "
                "hardware=NAME) and tune with --model-uri", name, len(distinct["hardware"]),
                ", ".join(distinct["hardware"]))
    result = train_step_time_model(workspace, where, config, progress=progress)
    return f"models:/{result.registered_model}@{CHAMPION}"


def champion_for_engine(workspace, engine: str, *, progress: bool | None = None) -> str:
    """The champion trained on ``engine``'s measured steps (trained first when the store has
    them but no model yet); a simulator-only engine (``static``, not launchable) takes the
    workspace's default champion.

    Raises:
        ModelError: the store has no measured steps of ``engine``; the message says how to
            get some.
    """
    from servetune.data.engines import get_engine

    spec = get_engine(engine)
    store = TraceStore.for_workspace(workspace)
    ingest_samples_if_empty(store)
    if not spec.program:
        return ensure_champion(workspace, progress=progress)
    steps = store.query_table("steps", columns=["engine"],
                              where={"source": list(TRAINING_SOURCES)},
                              engine=partition_value(spec.name))
    if not steps.num_rows:
        raise ModelError(
            f"no step-time model for {spec.name}: the trace store has no {spec.name} "
            f"steps. Get some (servetune ingest of {spec.name}'s own logs or benchmark "
            f"results, or servetune validate / collect on your hardware), then servetune "
            f"train --where engine={spec.name}; or pass --model-uri to simulate with another "
            "engine's model (its step times are then that engine's)")
    return ensure_champion(workspace, {"engine": spec.name}, progress=progress)


def step_model_for_engine(workspace, engine: str, model_uri: str | None = None, *,
                          progress: bool | None = None) -> StepTimeModel:
    """The step-time model to simulate ``engine`` with: ``model_uri`` if given (a warning when
    it was trained on another engine's steps), else :func:`champion_for_engine`."""
    from servetune.data.engines import get_engine

    spec = get_engine(engine)
    uri = model_uri or champion_for_engine(workspace, spec.name, progress=progress)
    model = StepTimeModel.load(uri, tracking_uri=workspace.tracking_uri)
    trained = model_engine(model.name)
    if spec.program and trained is not None and trained != spec.name:
        log.warning("%s was trained on %s steps: simulating %s with it gives %s's step times, "
                    "not %s's", uri, trained, spec.name, trained, spec.name)
    return model


def model_engine(model_name: str) -> str | None:
    """The engine of a registered model's name (``step-time.<engine>.<model>.<hardware>``)."""
    parts = model_name.split(".")
    return parts[1] if len(parts) >= 4 and parts[0] == "step-time" else None


def ingest_samples_if_empty(store: TraceStore) -> bool:
    """Ingest the bundled samples when the store has no step traces; True if it did."""
    if store.summary()["steps"]["rows"]:
        return False
    from servetune.data._ingest import ingest_paths, sample_paths
    from servetune.data.adapters import default_registry

    paths = sample_paths()
    if not paths:
        raise ModelError("the trace store has no step traces and no bundled samples were "
                         "found; ingest traces with `servetune ingest PATH`")
    log.warning("the trace store has no step traces: ingesting the bundled samples (%s)",
                ", ".join(p.name for p in paths))
    ingest_paths(store, paths, default_registry())
    return True

"""Training end to end on a real MLflow SQLite store and a real Parquet trace store.

The traces are small generated frames (tests/_helpers_models.py); accuracy on real data is
measured in benchmarks/train_step_time.py, not here.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import xgboost as xgb
from _helpers_models import synthetic_traces
from mlflow import MlflowClient

from servetune import InputError, ModelError
from servetune.data import TraceStore, Workspace
from servetune.features import DEFAULT_FEATURE_SET, KNOB_COLUMNS, RAW_COLUMNS, knob_vector
from servetune.models import (
    CHAMPION,
    StepTimeModel,
    TrainConfig,
    ensure_champion,
    linear_base_matrix,
    list_registered,
    load_training_frame,
    parse_where,
    train_step_time_model,
)
from servetune.models._registry import client_for

FAST = TrainConfig(n_trials=2, cv_splits=2, search_budget_s=30)
BAD = TrainConfig(n_trials=1, estimator_params={"max_depth": 1, "n_estimators": 3,
                                                "early_stopping_rounds": 0})


def _workspace(tmp_path, n_runs=8, seed=0) -> Workspace:
    ws = Workspace.resolve(tmp_path / "ws")
    steps, runs = synthetic_traces(n_runs=n_runs, steps_per_run=250, seed=seed)
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="generated",
                                        sha256=f"generated-{seed}", format="test")
    return ws


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = _workspace(tmp_path_factory.mktemp("train"))
    return ws, train_step_time_model(ws, config=FAST, progress=False)


def test_training_is_logged_with_params_lineage_metrics_plots_and_model(trained):
    ws, result = trained
    assert result.champion and result.version == 1
    for key in ("mape", "p50_ape", "p90_ape", "r2", "extrap_mape", "cv_mape"):
        assert np.isfinite(result.metrics[key]), key
    assert result.metrics["test_runs"] >= 1 and result.metrics["train_runs"] >= 2
    client = client_for(ws.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((ws.root / "mlruns" / "artifacts").as_uri())
    assert run.data.params["max_depth"] and run.data.params["train.holdout_salt"]
    assert run.data.tags["feature_set"] == DEFAULT_FEATURE_SET
    assert run.data.tags["data.content_sha256"] == result.lineage["content_sha256"]
    assert run.data.metrics["mape"] == pytest.approx(result.metrics["mape"])
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"lineage.json", "per_run_errors.csv", "plots", "model"} <= artifacts
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert plots == {"plots/predicted_vs_measured.png", "plots/error_by_batch_size.png",
                     "plots/feature_importance.png"}
    model_files = {a.path for a in client.list_artifacts(result.run_id, "model")}
    assert {"model/MLmodel", "model/input_example.json"} <= model_files
    lineage = json.loads(open(client.download_artifacts(result.run_id, "lineage.json",
                                                        str(ws.root))).read())
    assert not set(lineage["test_runs"]) & set(lineage["train_runs"])
    assert lineage["rows"] == 8 * 250
    mv = client.get_model_version_by_alias(result.registered_model, CHAMPION)
    assert int(mv.version) == 1 and mv.run_id == result.run_id
    assert result.registered_model == "step-time.transformers-cb.tiny.CPU"


def test_model_signature_and_input_example_match_the_feature_set(trained):
    from mlflow.models import Model

    ws, result = trained
    path = client_for(ws.tracking_uri).download_artifacts(result.run_id, "model/MLmodel",
                                                           str(ws.root / "dl"))
    model = Model.load(path)
    names = [c.name for c in model.signature.inputs.inputs]
    assert names == list(StepTimeModel.load(result.model_uri,
                                            tracking_uri=ws.tracking_uri).feature_set.feature_names)
    assert model.saved_input_example_info is not None


def test_champion_loads_predicts_and_compiles_to_float32_precision(trained):
    ws, result = trained
    model = StepTimeModel.load(f"models:/{result.registered_model}@champion",
                               tracking_uri=ws.tracking_uri)
    frame, _ = load_training_frame(TraceStore.for_workspace(ws))
    ms = model.predict(frame)
    assert ms.shape == (len(frame),) and (ms > 0).all()
    compiled = model.compile()
    features = model.feature_set.frame(frame)
    # the default feature set has a linear base: XGBoost adds it as each row's base margin
    base = linear_base_matrix(*compiled.forest.base_arrays, compiled.forest.log_target,
                              np.ascontiguousarray(features, dtype=np.float32))
    assert compiled.forest.base_coef.size > 0 and np.isfinite(base).all()
    expected = model.booster.predict(xgb.DMatrix(
        features, feature_names=list(model.feature_set.feature_names), base_margin=base))
    tolerance = compiled.forest.n_trees * np.finfo(np.float32).eps
    np.testing.assert_allclose(compiled.forest.predict_margin(features), expected,
                               rtol=tolerance)
    one_run = frame[frame.run_id == frame.run_id.iloc[0]]
    knobs = one_run[list(KNOB_COLUMNS)].iloc[0].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(
        compiled.predict_ms(one_run[list(RAW_COLUMNS)].to_numpy(np.float64), knobs),
        model.predict(one_run), rtol=tolerance)


def test_champion_moves_only_when_the_new_model_is_better(tmp_path):
    ws = _workspace(tmp_path, n_runs=6, seed=4)
    weak = train_step_time_model(ws, config=BAD, progress=False)
    assert weak.champion and weak.champion_before is None
    strong = train_step_time_model(ws, config=TrainConfig(n_trials=1), progress=False)
    assert strong.champion
    assert strong.champion_before["version"] == weak.version
    assert strong.metrics["mape"] < strong.champion_before["mape"]
    again = train_step_time_model(ws, config=BAD, progress=False)
    assert not again.champion
    assert again.champion_before["mape"] == pytest.approx(strong.metrics["mape"])
    client = client_for(ws.tracking_uri)
    assert int(client.get_model_version_by_alias(strong.registered_model, CHAMPION).version) == \
        strong.version
    listed = list_registered(client)
    assert [v["version"] for v in listed[0]["versions"]] == [3, 2, 1]
    assert listed[0]["aliases"] == {CHAMPION: strong.version}
    # ensure_champion finds the existing champion instead of training again
    assert ensure_champion(ws) == f"models:/{strong.registered_model}@{CHAMPION}"
    assert len(client.search_model_versions(f"name='{strong.registered_model}'")) == 3


def test_lineage_hash_is_deterministic_and_filters_apply(trained):
    ws, result = trained
    store = TraceStore.for_workspace(ws)
    frame, lineage = load_training_frame(store)
    assert lineage["content_sha256"] == result.lineage["content_sha256"]
    sub, sub_lineage = load_training_frame(store, parse_where(["async_batching=true"]))
    assert set(sub.async_batching) == {1.0} and sub_lineage["runs"] == 4
    assert sub_lineage["content_sha256"] != lineage["content_sha256"]
    one, _ = load_training_frame(store, parse_where([f"run_id={frame.run_id.iloc[0]}"]))
    assert one.run_id.nunique() == 1
    with pytest.raises(ModelError, match="no measured or reconstructed step traces"):
        load_training_frame(store, parse_where(["engine=vllm"]))


def test_parse_where_types_and_errors():
    assert parse_where(["block_size=32", "cuda_graph=false", "engine=x"]) == {
        "block_size": 32, "cuda_graph": False, "engine": "x"}
    with pytest.raises(InputError, match="unknown filter column"):
        parse_where(["colour=red"])
    with pytest.raises(InputError, match="key=value"):
        parse_where(["block_size"])
    with pytest.raises(InputError, match="int32"):
        parse_where(["block_size=big"])


def test_loading_unknown_model_names_what_to_do(trained):
    ws, _ = trained
    with pytest.raises(ModelError, match="servetune models ls"):
        StepTimeModel.load("models:/nope@champion", tracking_uri=ws.tracking_uri)
    with pytest.raises(ModelError, match="models:/NAME@ALIAS"):
        StepTimeModel.load("runs:/abc/model", tracking_uri=ws.tracking_uri)


def test_tracking_stays_in_the_workspace(trained, tmp_path):
    ws, _ = trained
    # no process-global MLflow state: another workspace sees none of these models
    other = Workspace.resolve(tmp_path / "other")
    other.mlruns_dir(ensure=True)
    assert list_registered(MlflowClient(tracking_uri=other.tracking_uri,
                                        registry_uri=other.tracking_uri)) == []
    assert knob_vector({}).shape == (len(KNOB_COLUMNS),)


def test_graph_capture_steps_are_excluded_and_counted(tmp_path):
    ws = Workspace.resolve(tmp_path / "ws")
    steps, runs = synthetic_traces(n_runs=2, steps_per_run=50, seed=6)
    steps["extra"] = '{"waiting":0}'
    steps["hardware"] = runs["hardware"] = "Tiny GPU"  # stored as the partition value Tiny-GPU
    steps.loc[[0, 50], "extra"] = '{"waiting":0, "graph_captured": true}'
    steps.loc[[0, 50], "duration_ms"] = 2500.0  # a capture step costs seconds
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="g",
                                        sha256="g", format="test")
    frame, lineage = load_training_frame(TraceStore.for_workspace(ws))
    assert lineage["excluded_graph_capture_steps"] == 2 and len(frame) == 98
    assert frame.duration_ms.max() < 2500.0 and "extra" not in frame.columns
    spelled, _ = load_training_frame(TraceStore.for_workspace(ws),
                                     parse_where(["hardware=Tiny GPU"]))
    assert len(spelled) == 98  # a filter is normalised like the store's partition values


def test_ensure_champion_names_the_model_after_measured_steps_only(trained):
    """Simulated steps in the store (another engine/hardware) must not change the model name."""
    ws, result = trained
    steps, runs = synthetic_traces(n_runs=1, steps_per_run=20, seed=11)
    steps = steps.assign(source="simulated", engine="vllm", hardware="sim-gpu")
    runs = runs.assign(source="simulated", engine="vllm", hardware="sim-gpu")
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="simulated",
                                        sha256="simulated-11", format="test")
    client = client_for(ws.tracking_uri)
    before = len(client.search_registered_models())
    assert ensure_champion(ws) == f"models:/{result.registered_model}@{CHAMPION}"
    assert len(client.search_registered_models()) == before  # nothing trained, nothing named


def test_a_linear_base_travels_with_the_registered_model(tmp_path):
    ws = _workspace(tmp_path)
    result = train_step_time_model(ws, config=replace(FAST, feature_set="step_v5", n_trials=1),
                                   progress=False)
    model = StepTimeModel.load(result.model_uri, tracking_uri=ws.tracking_uri)
    fs = model.feature_set
    assert fs.name == "step_v5" and model.base_coef.shape == (fs.n_features,)
    assert (model.base_coef >= 0).all() and model.base_coef[fs.base_indices].sum() > 0
    frame, _ = load_training_frame(TraceStore.for_workspace(ws))
    features = fs.frame(frame)
    base = linear_base_matrix(model.base_coef, model.base_intercept, True, features)
    trees_only = model.booster.predict(xgb.DMatrix(features, feature_names=list(fs.feature_names)))
    np.testing.assert_array_equal(
        model.predict_margin(frame),
        model.booster.predict(xgb.DMatrix(features, feature_names=list(fs.feature_names),
                                          base_margin=base)))
    assert not np.allclose(model.predict_margin(frame), trees_only)  # the base is applied
    compiled = model.compile()
    tolerance = compiled.forest.n_trees * np.finfo(np.float32).eps
    np.testing.assert_allclose(compiled.forest.predict_margin(features),
                               model.predict_margin(frame), rtol=tolerance, atol=1e-5)


def test_plain_mlflow_pyfunc_predicts_with_the_linear_base(trained, tmp_path):
    """The logged model's ``python_function`` flavor adds the linear base (MLflow's xgboost
    loader alone would return the trees' correction only): it agrees with StepTimeModel."""
    import mlflow.pyfunc
    import mlflow.xgboost

    ws, result = trained
    model = StepTimeModel.load(result.model_uri, tracking_uri=ws.tracking_uri)
    assert model.base_coef.size > 0  # the default feature set fits a base
    local = client_for(ws.tracking_uri).download_artifacts(result.run_id, "model", str(tmp_path))
    frame, _ = load_training_frame(TraceStore.for_workspace(ws))
    frame = frame.head(300)
    features = model.feature_set.dataframe(frame)
    margin = mlflow.pyfunc.load_model(local).predict(features)
    np.testing.assert_allclose(np.exp(margin), model.predict(frame), rtol=1e-5)
    trees_only = mlflow.xgboost.load_model(local).predict(xgb.DMatrix(features))
    assert not np.allclose(trees_only, margin, rtol=1e-3)
    from mlflow.exceptions import MlflowException
    with pytest.raises(MlflowException, match="missing inputs"):  # the signature is enforced
        mlflow.pyfunc.load_model(local).predict(features.drop(columns=features.columns[:1]))

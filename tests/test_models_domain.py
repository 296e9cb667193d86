"""The training domain of a step-time model: recorded at training, carried by the registry,
checked by every simulation (real MLflow SQLite store, real Parquet trace store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers_models import synthetic_traces
from mlflow import MlflowClient

from servetune.data import TraceStore, Workload, Workspace
from servetune.models import (
    DOMAIN_COLUMNS,
    StepTimeModel,
    TrainConfig,
    TrainingDomain,
    domain_report,
    format_domain_warning,
    train_step_time_model,
)
from servetune.models._domain import COMBINATION_KNOBS
from servetune.tuner.simulator import Simulator

FAST = TrainConfig(n_trials=1, cv_splits=2, search_budget_s=20)


def _workspace(root: Path, n_runs: int = 8) -> Workspace:
    ws = Workspace.resolve(root / "ws")
    steps, runs = synthetic_traces(n_runs=n_runs, steps_per_run=200, seed=0)
    runs["num_blocks"] = [400 + 100 * i for i in range(len(runs))]
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="generated",
                                        sha256=f"generated-domain-{n_runs}", format="test")
    return ws


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = _workspace(tmp_path_factory.mktemp("domain"))
    result = train_step_time_model(ws, config=FAST, progress=False)
    model = StepTimeModel.load(result.model_uri, tracking_uri=ws.tracking_uri)
    client = MlflowClient(tracking_uri=ws.tracking_uri)
    lineage = json.loads(Path(client.download_artifacts(
        result.run_id, "lineage.json", str(tmp_path_factory.mktemp("dl")))).read_text())
    store = TraceStore.for_workspace(ws)
    runs = store.query("runs")
    train_runs = runs[runs.run_id.isin(lineage["train_runs"])]
    steps = store.query("steps", run_id=lineage["train_runs"])
    return ws, result, model, train_runs, steps


def _transformers_config(run) -> dict:
    return {"block_size": int(run.block_size), "num_blocks": int(run.num_blocks),
            "max_batch_tokens": int(run.max_batch_tokens),
            "use_async_batching": bool(run.async_batching), "use_cuda_graph": bool(run.cuda_graph)}


def test_the_recorded_domain_matches_the_training_data(trained, tmp_path):
    ws, result, model, train_runs, steps = trained
    domain = model.domain
    assert isinstance(domain, TrainingDomain)
    # the artifact is in the training run, and round-trips
    path = MlflowClient(tracking_uri=ws.tracking_uri).download_artifacts(
        result.run_id, "domain.json", str(tmp_path))
    assert TrainingDomain.from_dict(json.loads(Path(path).read_text())) == domain
    assert TrainingDomain.from_dict(domain.to_dict()) == domain
    assert domain.n_runs == len(train_runs) < 8 and domain.n_steps == len(steps)
    for col in DOMAIN_COLUMNS:
        assert domain.step_ranges[col] == (float(steps[col].min()), float(steps[col].max()))
    combos = {tuple(float(getattr(r, k)) for k in COMBINATION_KNOBS)
              for r in train_runs.itertuples()}
    assert set(domain.knob_combinations) == combos
    for (a, g), group in train_runs.groupby(["async_batching", "cuda_graph"]):
        mode = domain.modes[f"async={int(a)},graph={int(g)}"]
        cache = group.num_blocks * group.block_size
        assert mode["runs"] == len(group)
        assert mode["cache_tokens"] == [float(cache.min()), float(cache.max())]
        assert mode["max_batch_tokens"] == [float(group.max_batch_tokens.min()),
                                            float(group.max_batch_tokens.max())]
    # the compiled form carries it to the simulator
    assert model.compile().domain == domain


def test_an_in_sample_replay_is_inside_on_the_config_level(trained):
    _, _, model, train_runs, steps = trained
    run = train_runs.iloc[0]
    knobs = {k: run[k] for k in COMBINATION_KNOBS}
    assert model.domain.check_config(knobs, int(run.num_blocks * run.block_size)) == []
    # the training steps themselves are all inside
    cov = model.domain.step_coverage(steps)
    assert cov["share_outside"] == 0.0 and cov["worst_ratio"] == 1.0
    # and a short simulation of the same configuration reports no config-level reason
    sim = Simulator("transformers", _transformers_config(run), model.compile())
    work = Workload.from_arrays(np.arange(20) * 0.2, np.full(20, 64), np.full(20, 16),
                                name="small")
    report = sim.domain_report(sim.run(work, 0, record_steps=True))
    assert report["known"] and report["reasons"] == []
    assert report["steps"]["steps"] > 0


def test_a_config_far_outside_is_flagged_with_ratios(trained):
    _, _, model, train_runs, _ = trained
    run = train_runs.iloc[0]
    config = {**_transformers_config(run), "max_batch_tokens": 16384, "block_size": 256,
              "num_blocks": 3_000_000 // 256}
    sim = Simulator("transformers", config, model.compile())
    rng = np.random.default_rng(0)
    n = 400  # long prompts at a high rate: big prefill chunks, many sequences, long contexts
    work = Workload.from_arrays(np.sort(rng.uniform(0, 2.0, n)), rng.integers(3000, 8000, n),
                                rng.integers(200, 400, n), name="long-fast")
    result = sim.run(work, 0, record_steps=True)
    report = sim.domain_report(result)
    assert report["outside"] is True
    text = " ".join(report["reasons"])
    assert "max_batch_tokens 16384" in text and "cache_tokens" in text
    mode = model.domain.modes[f"async={int(run.async_batching)},graph={int(run.cuda_graph)}"]
    ratio = 16384 / mode["max_batch_tokens"][1]
    assert f"{ratio:.1f}x above the largest" in text
    cov = report["steps"]
    assert cov["share_outside"] > 0 and cov["worst_ratio"] > 1
    col = cov["worst_column"]
    assert cov["worst_ratio"] == pytest.approx(
        result.steps[:, 3 + DOMAIN_COLUMNS.index(col)].max() / model.domain.step_ranges[col][1])
    line = format_domain_warning(report)
    assert line.startswith("outside the model's training data: ") and f"worst {col}" in line
    # an unseen knob combination and an unseen mode are reasons too
    odd = {**{k: run[k] for k in COMBINATION_KNOBS}, "block_size": 48}
    assert any("not among the" in r for r in model.domain.check_config(odd))
    narrow = TrainingDomain.from_dict({**model.domain.to_dict(), "modes": {
        k: v for k, v in model.domain.modes.items() if k != "async=1,graph=1"}})
    assert any("never trained" in r for r in narrow.check_config(
        {**odd, "async_batching": 1, "cuda_graph": 1}))


def test_step_coverage_below_the_minimum_and_arrays():
    domain = TrainingDomain(step_ranges={c: (10.0, 100.0) for c in DOMAIN_COLUMNS},
                            knob_combinations=(), modes={})
    steps = pd.DataFrame({c: [50, 50, 50, 50] for c in DOMAIN_COLUMNS})
    steps.loc[1, "kv_tokens_sum"] = 400  # 4x above
    steps.loc[2, "num_seqs"] = 2         # 5x below
    cov = domain.step_coverage(steps)
    assert cov["share_outside"] == 0.5 and cov["worst_ratio"] == 5.0
    assert cov["worst_column"] == "num_seqs" and cov["worst_direction"] == "below"
    raw = np.column_stack([steps[c] for c in DOMAIN_COLUMNS] + [np.zeros(4)])  # + attn work
    assert domain.step_coverage(raw) == cov


def test_simulate_cli_reports_the_domain_and_unknown_domains(trained, tmp_path):
    ws, result, _, train_runs, _ = trained
    base = [sys.executable, "-m", "servetune.cli._main", "--workspace", str(ws.root),
            "simulate", "--engine", "transformers", "--model-uri", result.model_uri,
            "--set", "max_batch_tokens=16384", "--set", "num_blocks=12000",
            "--workload", "poisson:rate=200,n=300"]
    out = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    domain = json.loads(out.stdout)["domain"]
    assert domain["known"] and domain["outside"] and domain["reasons"]
    assert domain["steps"]["steps"] == json.loads(out.stdout)["metrics"]["steps"]
    text = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "warning: outside the model's training data: " in text.stdout
    # --out without --record-steps still writes no steps
    out_dir = tmp_path / "out"
    wrote = subprocess.run([*base, "--out", str(out_dir)], capture_output=True, text=True,
                           timeout=300)
    assert wrote.returncode == 0, wrote.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["requests.parquet", "runs.parquet"]
    # an older registry entry without domain.json loads with domain=None: "domain unknown"
    artifact_root = Path(MlflowClient(tracking_uri=ws.tracking_uri).get_run(
        result.run_id).info.artifact_uri.removeprefix("file://"))
    (artifact_root / "domain.json").unlink()
    model = StepTimeModel.load(result.model_uri, tracking_uri=ws.tracking_uri)
    assert model.domain is None and model.compile().domain is None
    old = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=300)
    assert old.returncode == 0, old.stderr
    unknown = json.loads(old.stdout)["domain"]
    assert unknown["known"] is False and "domain unknown" in unknown["message"]
    assert domain_report(None, {})["message"] == unknown["message"]

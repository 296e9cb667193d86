"""Secrets never reach the tune study's MLflow run or its printed output (issue 18): a space
that fixes secret ``env.HF_TOKEN`` and ``env.API_KEY`` values is tuned with tracking on
(real MLflow SQLite store, real artifacts); no byte of the MLflow store holds either value, nor
does ``servetune tune --json``; the study's own files keep them (a verification launches with
them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers_models import trained_synthetic_workspace

from servetune.tuner._job import TuneSettings, run_tune

TOKEN, KEY_A = "hf_s3cr3tT0ken", "sk-first-4c9e"
SPACE = f"""
name = "secret-test"
engine = "transformers-cb"
[params.max_batch_tokens]
type = "enum"
choices = [256, 512]
[fixed]
"env.HF_TOKEN" = "{TOKEN}"
"env.API_KEY" = "{KEY_A}"
"env.LOG_LEVEL" = "info"
"""
WORKLOAD = "poisson:rate=10,n=40,input=uniform:100:300,output=uniform:10:30"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    ws, model = trained_synthetic_workspace(root, steps_per_run=150, seed=5)
    space = root / "space.toml"
    space.write_text(SPACE)
    return ws, model.model_uri, space


def _bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_no_secret_reaches_mlflow(workspace):
    ws, uri, space = workspace
    result = run_tune(ws, TuneSettings(space=str(space), workload=WORKLOAD, optimizer="grid",
                                       study="sec", model_uri=uri, track=True,
                                       domain="ignore",
                                       base_config={"block_size": 32, "num_blocks": 512}),
                      progress=False)
    assert result["study"]["mlflow_run_id"]
    mlflow = _bytes_under(ws.root / "mlruns")
    assert b"secret-test" in mlflow  # the run and its artifacts are there ...
    for secret in (TOKEN, KEY_A):  # ... and no secret value, in the db or any artifact
        assert secret.encode() not in mlflow, secret
    assert b"info" in mlflow  # a non-secret env value is kept
    # the study's own files keep the real values: a verification launches with them
    study = _bytes_under(ws.studies_dir() / "sec")
    assert TOKEN.encode() in study


def test_no_secret_in_tune_json_output(workspace):
    ws, uri, space = workspace
    out = subprocess.run(
        [sys.executable, "-m", "servetune.cli._main", "--workspace", str(ws.root), "tune",
         "--space", str(space), "--workload", WORKLOAD, "--optimizer", "grid", "--study",
         "sec-json", "--model-uri", uri, "--domain", "ignore", "--set", "block_size=32",
         "--set", "num_blocks=512", "--no-mlflow", "--json"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for secret in (TOKEN, KEY_A):
        assert secret not in out.stdout and secret not in out.stderr
    best = json.loads(out.stdout)["best"]["config"]
    assert best["env.HF_TOKEN"] == "***" and best["env.API_KEY"] == "***"

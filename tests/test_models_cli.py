"""``servetune train`` and ``servetune models ls`` as real subprocesses on a real workspace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _helpers_models import synthetic_traces

from servetune.data import TraceStore, Workspace


def _servetune(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("servetune")  # the installed console script
    return subprocess.run([str(script), "--workspace", str(ws.root), *args],
                          capture_output=True, text=True, timeout=300)


def test_train_json_then_models_ls(tmp_path):
    ws = Workspace.resolve(tmp_path / "ws")
    steps, runs = synthetic_traces(n_runs=6, steps_per_run=200, seed=9)
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="generated",
                                        sha256="generated-9", format="test")
    done = _servetune(ws, "train", "--trials", "1", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["champion"] is True and out["model_uri"].startswith("models:/step-time.")
    assert {"mape", "p90_ape", "r2", "extrap_mape"} <= set(out["metrics"])
    assert out["lineage"]["rows"] == 1200 and len(out["run_id"]) == 32

    listed = _servetune(ws, "models", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    models = json.loads(listed.stdout)
    assert models[0]["aliases"] == {"champion": 1}
    assert abs(models[0]["versions"][0]["metrics"]["mape"] - out["metrics"]["mape"]) < 1e-3

    text = _servetune(ws, "models", "ls")
    assert "[champion]" in text.stdout


def test_bad_where_is_an_input_error(tmp_path):
    ws = Workspace.resolve(tmp_path / "ws")
    done = _servetune(ws, "train", "--where", "colour=red")
    assert done.returncode == 2
    assert "unknown filter column 'colour'" in done.stderr


def test_train_on_an_empty_workspace_ingests_the_bundled_samples(tmp_path):
    from servetune.data._ingest import sample_paths

    assert sample_paths(), "the H200 sample ships in data/samples/"
    ws = Workspace.resolve(tmp_path / "empty")
    done = _servetune(ws, "train", "--trials", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert "ingested the bundled samples" in done.stderr
    out = json.loads(done.stdout)
    assert out["lineage"]["runs"] >= 24 and out["lineage"]["rows"] >= 20_000
    assert out["lineage"]["hardware"] == ["NVIDIA-H200"]
    assert out["registered_model"] == "step-time.transformers-cb.llama-1b-like.NVIDIA-H200"
    assert out["champion"] is True

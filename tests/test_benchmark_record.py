"""Benchmark records: commit of a real git checkout, machine, GPU from nvidia-smi, atomic file."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from servetune import InputError
from servetune.data._benchmark_record import (
    measured_gpus,
    read_record,
    record_path,
    write_record,
)
from servetune.data._ingest import SAMPLES_DIR

GIT = shutil.which("git")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run([GIT, "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _bin_with(tmp_path: Path, **scripts: str) -> str:
    """A PATH holding git and the given executable scripts only (no nvidia-smi unless given)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "git").symlink_to(GIT)
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/sh\n" + body)
        (folder / name).chmod(0o755)
    return str(folder)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "benchmarks" / "results").mkdir(parents=True)
    _git(root, "init", "-q")
    (root / "tracked.txt").write_text("one\n")
    _git(root, "add", "tracked.txt")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return root


@pytest.mark.skipif(GIT is None, reason="git not installed")
def test_record_in_a_checkout_names_commit_machine_args_figures(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _bin_with(tmp_path))
    results = repo / "benchmarks" / "results"
    args = argparse.Namespace(rounds=3, out=Path("x.json"))
    path = write_record("bench_a", {"wall_s": np.float64(1.25), "n": np.int64(7),
                                    "per_run": np.array([1.0, 2.0])},
                        args=args, notes="a note", results_dir=results)
    assert path == results / "bench_a.json"
    record = json.loads(path.read_text())
    assert record["name"] == "bench_a"
    assert record["commit"] == {"sha": _git(repo, "rev-parse", "HEAD"), "dirty": False}
    assert record["figures"] == {"wall_s": 1.25, "n": 7, "per_run": [1.0, 2.0]}
    assert record["args"] == {"rounds": 3, "out": "x.json"}
    assert record["notes"] == "a note"
    assert record["gpu"] is None  # no nvidia-smi on PATH
    machine = record["machine"]
    assert machine["cpu_count"] == os.cpu_count() and machine["hostname"]
    assert machine["memory_gib"] > 0 and machine["python"].count(".") == 2
    assert record["created_at"].endswith("+00:00")
    assert read_record("bench_a", results_dir=results) == record
    assert not list(results.glob("*.tmp-*"))  # the atomic write left no temporary


@pytest.mark.skipif(GIT is None, reason="git not installed")
def test_changed_tracked_file_marks_the_commit_dirty(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _bin_with(tmp_path))
    (repo / "untracked.txt").write_text("new\n")
    results = repo / "benchmarks" / "results"
    clean = read_record_of(write_record("b", {}, results_dir=results))
    assert clean["commit"]["dirty"] is False  # untracked files do not count
    (repo / "tracked.txt").write_text("two\n")
    assert read_record_of(write_record("b", {}, results_dir=results))["commit"]["dirty"] is True


def test_outside_a_checkout_the_commit_is_null(tmp_path):
    record = read_record_of(write_record("c", {"x": 1}, results_dir=tmp_path / "out"))
    assert record["commit"] is None and record["args"] is None


@pytest.mark.skipif(GIT is None, reason="git not installed")
def test_gpu_from_nvidia_smi_and_measured_on(tmp_path, monkeypatch):
    smi = ('echo "NVIDIA H100 80GB HBM3, GPU-aaaa, 81559 MiB, 570.86.15"\n'
           'echo "NVIDIA H100 80GB HBM3, GPU-bbbb, 81559 MiB, 570.86.15"\n')
    monkeypatch.setenv("PATH", _bin_with(tmp_path, **{"nvidia-smi": smi}))
    record = read_record_of(write_record("d", {}, measured_on=["NVIDIA H200"],
                                         results_dir=tmp_path / "out"))
    assert record["gpu"] == [
        {"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{c}", "memory_total": "81559 MiB",
         "driver_version": "570.86.15"} for c in ("aaaa", "bbbb")]
    assert record["measured_on"] == ["NVIDIA H200"]


@pytest.mark.skipif(GIT is None, reason="git not installed")
def test_failing_nvidia_smi_gives_null(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _bin_with(tmp_path, **{"nvidia-smi": "exit 9\n"}))
    assert read_record_of(write_record("e", {}, results_dir=tmp_path / "o"))["gpu"] is None


def test_bad_names_and_missing_records_are_input_errors(tmp_path):
    for bad in ("../x", "a/b", "x.json", ""):
        with pytest.raises(InputError, match="record name"):
            record_path(bad, tmp_path)
    with pytest.raises(InputError, match="no benchmark record"):
        read_record("absent", results_dir=tmp_path)
    (tmp_path / "broken.json").write_text("{\n oops")
    with pytest.raises(InputError, match="broken.json: line 2"):
        read_record("broken", results_dir=tmp_path)


def test_measured_gpus_of_the_shipped_sample(tmp_path):
    import pandas as pd

    assert measured_gpus(SAMPLES_DIR) == ["NVIDIA H200"]
    pd.DataFrame({"gpu_name": ["NVIDIA H100", None, "NVIDIA A100"]}).to_parquet(tmp_path / "r.pq")
    assert measured_gpus(SAMPLES_DIR / "runs.parquet", tmp_path / "r.pq") == [
        "NVIDIA A100", "NVIDIA H100", "NVIDIA H200"]


def read_record_of(path: Path) -> dict:
    return json.loads(path.read_text())

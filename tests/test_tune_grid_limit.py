"""A grid search whose grid is too large is refused with its computed size, before any grid is
built."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers_models import trained_synthetic_workspace

from servetune import ConfigError
from servetune.data import Workspace
from servetune.tuner import Study
from servetune.tuner._job import load_space
from servetune.tuner._limits import MAX_EVALUATIONS

# 100,000 x 100,000 integer values: 10^10 grid points (itertools.product over them would run
# for hours and its dicts would need terabytes)
HUGE = """
name = "huge-grid"
engine = "transformers-cb"
[params.max_batch_tokens]
type = "int"
low = 1
high = 100000
step = 1
[params.max_requests_per_batch]
type = "int"
low = 1
high = 100000
step = 1
"""
# 1,000 x 32 x 46 = 1,472,000 points: buildable, but one simulation each is beyond the study
# limit (before this check it started a study of 1.47 M simulations, about an hour)
LARGE = """
name = "large-grid"
engine = "transformers-cb"
[params.max_batch_tokens]
type = "int"
low = 1
high = 1000
step = 1
[params.max_requests_per_batch]
type = "int"
low = 256
high = 8192
step = 256
[params.max_memory_percent]
type = "float"
low = 0.5
high = 0.95
step = 0.01
"""


def _space(tmp_path: Path, text: str):
    path = tmp_path / "space.toml"
    path.write_text(text)
    return load_space(str(path))


def test_huge_grid_is_refused_with_its_size_without_building_it(tmp_path):
    space = _space(tmp_path, HUGE)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        Study.create(tmp_path / "study", space=space, optimizer={"name": "grid"})
    assert time.perf_counter() - started < 3.0
    message = str(info.value)
    assert "10,000,000,000 grid points" in message
    assert f"limit of {MAX_EVALUATIONS:,d}" in message
    assert space.grid_size() == 10_000_000_000


def test_grid_within_the_limit_is_built(tmp_path):
    space = _space(tmp_path, LARGE.replace("high = 1000\n", "high = 10\n"))
    assert space.grid_size() == len(space.grid()) == 10 * 32 * 46


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    ws, _ = trained_synthetic_workspace(tmp_path_factory.mktemp("grid"), n_runs=6,
                                        steps_per_run=200, num_blocks=None, n_jobs=1,
                                        estimator_params={"n_estimators": 30})
    return ws


def test_tune_refuses_a_grid_beyond_the_evaluation_limit(workspace, tmp_path):
    space = tmp_path / "large.toml"
    space.write_text(LARGE)
    exe = str(Path(sys.executable).with_name("servetune"))
    started = time.perf_counter()
    proc = subprocess.run([exe, "--workspace", str(workspace.root), "tune", "--space",
                           str(space), "--optimizer", "grid", "--no-mlflow", "--workload",
                           "poisson:rate=5,n=20", "--set", "gpu_memory_gib=80", "--set",
                           "model_weights_gib=2.3", "--set", "kv_bytes_per_token=32768",
                           "--json"], capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert "1,472,000 grid points" in proc.stderr
    assert f"limit of {MAX_EVALUATIONS:,d}" in proc.stderr
    assert elapsed < 60  # process start and model loading; the study itself never starts

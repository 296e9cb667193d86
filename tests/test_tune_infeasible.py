"""A study in which no evaluation gave a result exits 2 with the reason, never 0 with no best."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _helpers_models import trained_synthetic_workspace

from servetune import ConfigError, ServetuneError
from servetune.data import Workspace
from servetune.tuner import SearchSpace, Study
from servetune.tuner._job import require_result

WORKLOAD = "poisson:rate=20,n=40,input=lognormal:300:0.5:1000,output=lognormal:40:0.5:100"
MEMORY = ["--set", "gpu_memory_gib=80", "--set", "model_weights_gib=2.3", "--set",
          "kv_bytes_per_token=32768"]
# only the declared default satisfies the constraint (so the space passes the feasibility
# check), and a small swarm never proposes it
SPACE = """
name = "nearly-infeasible"
engine = "transformers-cb"
[params.max_batch_tokens]
type = "int"
low = 8
high = 65536
log = true
default = 65530
[[constraints]]
expr = "max_batch_tokens > 65520"
on_violation = "penalise"
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    ws, _ = trained_synthetic_workspace(tmp_path_factory.mktemp("infeasible"), n_runs=6,
                                        steps_per_run=200, num_blocks=None, n_jobs=1,
                                        estimator_params={"n_estimators": 30})
    return ws


@pytest.mark.parametrize("domain", ["penalise", "strict", "ignore"])
def test_tune_with_no_feasible_evaluation_exits_2_naming_the_constraint(workspace, tmp_path,
                                                                       domain):
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    exe = str(Path(sys.executable).with_name("servetune"))
    proc = subprocess.run([exe, "--workspace", str(workspace.root), "tune", "--space",
                           str(space), "--domain", domain, "--particles", "4", "--iterations",
                           "2", "--workload", WORKLOAD, *MEMORY, "--study", f"never-{domain}",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""  # no JSON document with best=null
    assert "Traceback" not in proc.stderr
    assert "none of its 8 evaluations gave a result: 8 infeasible" in proc.stderr
    assert "max_batch_tokens > 65520" in proc.stderr
    assert (workspace.root / "studies" / f"never-{domain}" / "study.json").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=workspace.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("servetune-tuning").experiment_id],
                              filter_string=f"attributes.run_name = 'never-{domain}'")
    assert [r.info.status for r in runs] == ["FAILED"]


def _raises(config: dict) -> dict:
    raise RuntimeError("engine refused the configuration")


def test_every_evaluation_failed_is_refused_with_the_failure(tmp_path):
    study = Study.create(tmp_path / "s", space=SearchSpace.builtin("transformers-cb"),
                         optimizer={"name": "random", "budget": 3, "batch_size": 3})
    with pytest.raises(ServetuneError, match="every evaluation so far failed"):
        study.run(_raises)  # the study stops itself after a batch with nothing but failures
    assert {r.status for r in study.records} == {"failed"}
    with pytest.raises(ConfigError, match="none of its 3 evaluations gave a result: 3 failed "
                                          r"\(most often: .*engine refused the configuration"):
        require_result(study)

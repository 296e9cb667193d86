"""The Python API: the README's example runs as written (real workspace, real training,
real MLflow store); results are typed and agree with the CLI; ``import servetune`` stays light."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import servetune
from servetune import ConfigError

DOC = Path(__file__).resolve().parent.parent / "README.md"


def _example_code() -> str:
    block = re.search(r"<!-- python-example -->\s*```python\n(.*?)```",
                      DOC.read_text(encoding="utf-8"), re.S)
    assert block, "README.md has no <!-- python-example --> Python block"
    return block.group(1)


@pytest.fixture(scope="module")
def example():
    """The documented example, executed once; its variables and printed lines."""
    import contextlib
    import io

    namespace: dict = {"__name__": "python_api_example"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_example_code(), str(DOC), "exec"), namespace)
    yield namespace, out.getvalue()
    shutil.rmtree(namespace["workspace"].root, ignore_errors=True)


def test_documented_example_trains_simulates_and_tunes(example):
    ns, printed = example
    trained, report, result = ns["trained"], ns["report"], ns["result"]
    assert isinstance(trained, servetune.TrainResult) and trained.champion
    assert trained.model_uri.startswith("models:/step-time.transformers-cb.")
    assert isinstance(report, servetune.SimulationReport)
    assert report.engine == "transformers-cb" and report.metrics["completed"] == 200
    assert report.config["max_batch_tokens"] == 512
    assert report.interval is not None and report.domain.get("known")
    low, mid, high = report.interval["metrics"]["ttft_p90_ms"]
    assert low <= mid <= high
    assert isinstance(result, servetune.TuneResult)
    assert result.best is not None and result.best.rank == 1 and not result.best.baseline
    assert result.baseline is not None and result.baseline.baseline
    assert len(result.candidates) <= 3
    assert result.best.launch["command"].startswith("transformers serve MODEL")
    assert result.best.domain["status"] in ("inside", "outside", "unknown")
    assert result.study_path.parent == ns["workspace"].studies_dir()
    assert (result.study_path / "study.json").is_file()
    assert "goodput" in printed and "launch: transformers serve MODEL" in printed
    json.dumps(report.to_dict()), json.dumps(result.to_dict())  # JSON-ready


def test_results_are_frozen(example):
    ns, _ = example
    with pytest.raises(AttributeError):
        ns["report"].seed = 1
    with pytest.raises(AttributeError):
        ns["result"].best.config = {}


def test_simulate_agrees_with_the_cli_json(example):
    ns, _ = example
    workspace = ns["workspace"]
    report = servetune.simulate("transformers", {"max_batch_tokens": 256},
                                "poisson:rate=3,n=80", workspace=str(workspace.root), seed=2,
                                slo={"ttft_ms": 1000})
    cli = subprocess.run([sys.executable, "-m", "servetune.cli._main", "--workspace",
                          str(workspace.root), "simulate", "--engine", "transformers", "--set",
                          "max_batch_tokens=256", "--workload", "poisson:rate=3,n=80",
                          "--seed", "2", "--slo-ttft-ms", "1000", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == json.loads(json.dumps(report.to_dict()))


def test_bad_arguments_say_what_is_valid(tmp_path):
    with pytest.raises(ConfigError, match=r"tune: unknown settings \['particle'\]; valid: .*"
                                          r"particles"):
        servetune.tune(tmp_path, particle=3)
    with pytest.raises(ConfigError, match=r"train: unknown settings \['trials'\]"):
        servetune.train(tmp_path, trials=1)
    with pytest.raises(ConfigError, match="workspace must be a path or a Workspace"):
        servetune.simulate("static", workspace=42)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        servetune.nope  # noqa: B018


def test_load_workload_is_seeded_and_limited():
    a = servetune.load_workload("poisson:rate=5,n=50", seed=3, limit=20)
    b = servetune.load_workload("poisson:rate=5,n=50", seed=3, limit=20)
    assert isinstance(a, servetune.Workload) and len(a) == 20
    assert (a.arrival_s == b.arrival_s).all() and (a.input_tokens == b.input_tokens).all()
    assert servetune.load_workload("poisson:rate=5,n=50", qps=10).rate_rps == pytest.approx(10)


def test_import_servetune_loads_no_api_module():
    code = ("import sys, servetune; "
            "print(sorted(m for m in sys.modules if m.startswith('servetune')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out.replace("'", '"')) == ["servetune"]
    assert {"load_workload", "train", "simulate", "tune"} <= set(servetune.__all__)
    assert {"simulate", "TuneResult"} <= set(dir(servetune))

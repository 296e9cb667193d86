"""Studies: evaluation bookkeeping, checkpoints, exact resume (kill -9 of a real subprocess),
process-pool and Dask execution."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from servetune import ConfigError, ServetuneError
from servetune.tuner import SearchSpace, Study
from servetune.tuner import open_executor

from _helpers_tuner import BowlEvaluator, run_bowl_study

HELPERS = Path(__file__).parent / "_helpers_tuner.py"


def _records(study: Study) -> list[dict]:
    return [asdict(r) for r in study.records]


def _new(tmp_path, name="s", optimizer=None, space=None, seed=3):
    space = space or SearchSpace.builtin("transformers-cb")
    return Study.create(tmp_path / name, space=space, seed=seed,
                        optimizer=optimizer or {"name": "pso", "particles": 6, "iterations": 5})


def test_study_runs_records_every_point_and_finds_the_best(tmp_path):
    study = _new(tmp_path)
    study.run(BowlEvaluator(study.space.to_dict()))
    assert study.status == "finished" and len(study.records) == 30
    best = study.best()
    assert best.score == max(r.score for r in study.records if r.status == "ok")
    assert best.metrics["goodput_rps"] == best.score  # raw metrics kept beside the score
    history = study.history()
    assert len(history) == 5 and history == sorted(history)
    top = study.top(3)
    assert len({json.dumps(t.config, sort_keys=True) for t in top}) == len(top)


def test_identical_configs_are_evaluated_once(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    study = _new(tmp_path, optimizer={"name": "pso", "particles": 10, "iterations": 8})
    study.run(BowlEvaluator(study.space.to_dict(), calls_dir=str(calls)))
    calls_made = sum(len(f.read_text().split()) for f in calls.iterdir())
    distinct = {json.dumps(r.config, sort_keys=True) for r in study.records}
    assert calls_made == len(distinct) < len(study.records)
    assert sum(r.cached for r in study.records) == len(study.records) - calls_made


def test_infeasible_points_are_recorded_not_evaluated(tmp_path):
    space = SearchSpace.from_dict({
        "name": "s", "engine": "e",
        "params": {"a": {"type": "int", "low": 0, "high": 9, "step": 1},
                   "b": {"type": "int", "low": 0, "high": 9, "step": 1}},
        "constraints": [{"expr": "a + b <= 9", "on_violation": "penalise"}]})
    seen = []

    def evaluator(config):
        seen.append(config)
        return {"goodput_rps": float(config["a"] + config["b"])}

    study = _new(tmp_path, space=space, optimizer={"name": "grid", "batch_size": 17})
    study.run(evaluator)
    infeasible = [r for r in study.records if r.status == "infeasible"]
    assert len(infeasible) == 45 and all("a + b <= 9" in r.error for r in infeasible)
    assert all(c["a"] + c["b"] <= 9 for c in seen) and len(seen) == 55
    assert study.best().score == 9.0


def test_a_failing_evaluation_is_recorded_with_its_reason(tmp_path):
    def evaluator(config):
        if config["max_batch_tokens"] < 1024:
            raise RuntimeError("simulated engine crash")
        return BowlEvaluator(SearchSpace.builtin("transformers-cb").to_dict())(config)

    study = _new(tmp_path)
    study.run(evaluator)
    failed = [r for r in study.records if r.status == "failed"]
    assert failed and all(r.error == "RuntimeError: simulated engine crash" for r in failed)
    assert all(r.score is None for r in failed)
    assert study.best().config["max_batch_tokens"] >= 1024


def test_a_study_whose_evaluations_all_fail_stops_with_the_error(tmp_path):
    def broken(config):
        raise ValueError("model file missing")

    with pytest.raises(ServetuneError, match="model file missing"):
        _new(tmp_path).run(broken)


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    whole = _new(tmp_path, "whole")
    whole.run(BowlEvaluator(whole.space.to_dict()))
    part = _new(tmp_path, "part")
    part.run(BowlEvaluator(part.space.to_dict()), max_iterations=2)
    assert part.status == "running" and part.iteration == 2
    resumed = Study.load(tmp_path / "part")
    assert resumed.iteration == 2
    resumed.run(BowlEvaluator(resumed.space.to_dict()))
    assert _records(resumed) == _records(whole)
    assert resumed.best().config == whole.best().config


def test_log_lines_beyond_the_checkpoint_are_cut_off_on_resume(tmp_path):
    """A kill between the log append and the checkpoint replace (or mid-append) leaves lines
    the checkpoint does not cover: they are dropped and the iteration is redone."""
    whole = _new(tmp_path, "whole")
    whole.run(BowlEvaluator(whole.space.to_dict()))
    part = _new(tmp_path, "part")
    part.run(BowlEvaluator(part.space.to_dict()), max_iterations=2)
    folder = tmp_path / "part"
    saved = (folder / "checkpoint.json").read_text()
    Study.load(folder).run(BowlEvaluator(part.space.to_dict()), max_iterations=1)
    (folder / "checkpoint.json").write_text(saved)  # as if the third checkpoint never landed
    with open(folder / "evaluations.jsonl", "a") as handle:
        handle.write('{"index": 99, "iteration"')  # and a torn line after it
    resumed = Study.load(folder)
    assert resumed.iteration == 2 and len(resumed.records) == 12
    resumed.run(BowlEvaluator(part.space.to_dict()))
    assert _records(Study.load(folder)) == _records(whole)


def test_a_damaged_log_is_reported(tmp_path):
    study = _new(tmp_path)
    study.run(BowlEvaluator(study.space.to_dict()), max_iterations=2)
    log = tmp_path / "s" / "evaluations.jsonl"
    log.write_bytes(log.read_bytes()[:100])
    with pytest.raises(ConfigError, match="the study folder is damaged"):
        Study.load(tmp_path / "s")


def test_create_refuses_an_existing_study_and_load_a_missing_one(tmp_path):
    _new(tmp_path)
    with pytest.raises(ConfigError, match="already holds a study"):
        _new(tmp_path)
    with pytest.raises(ConfigError, match="no study in"):
        Study.load(tmp_path / "nope")


def test_kill_9_at_many_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A real subprocess is SIGKILLed again and again: once before its first checkpoint, then
    each time at a random moment after it checkpointed a new iteration (mid-iteration, or at the
    instant the checkpoint appeared); every restart resumes from the last checkpoint."""
    reference = tmp_path / "reference"
    run_bowl_study(str(reference))
    expected = _records(Study.load(reference))
    target = tmp_path / "killed"
    checkpoint = target / "checkpoint.json"
    rng = np.random.default_rng(0)
    env = {**os.environ, "PYTHONPATH": str(HELPERS.parent)}

    def iteration() -> int | None:
        try:
            return json.loads(checkpoint.read_text())["iteration"]
        except FileNotFoundError:
            return None

    killed_at: list[int | None] = []
    for round_ in range(40):
        before = iteration()
        proc = subprocess.Popen([sys.executable, str(HELPERS), str(target), "0.02"], env=env)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if round_ == 0 and (target / "study.json").exists():
                break  # first round: before any checkpoint
            if round_ > 0 and iteration() != before:
                break
            time.sleep(0.002)
        if proc.poll() is not None:
            assert proc.returncode == 0
            break
        time.sleep(float(rng.choice([0.0, rng.uniform(0.0, 0.15)])))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(iteration())
    assert len(killed_at) >= 4, killed_at
    assert killed_at[0] is None, "the first kill should land before any checkpoint"
    assert len(set(killed_at)) >= 4, f"kills landed at too few states: {killed_at}"
    final = subprocess.run([sys.executable, str(HELPERS), str(target), "0"], env=env,
                           timeout=120)
    assert final.returncode == 0
    resumed = Study.load(target)
    assert resumed.status == "finished"
    assert _records(resumed) == expected
    assert not list(target.glob("checkpoint.json.tmp-*"))


def test_process_pool_gives_the_same_study_as_inline(tmp_path):
    inline = _new(tmp_path, "inline")
    inline.run(BowlEvaluator(inline.space.to_dict()))
    pooled = _new(tmp_path, "pooled")
    with open_executor(jobs=2) as executor:
        pooled.run(BowlEvaluator(pooled.space.to_dict()), executor=executor, parallelism=2)
    assert _records(pooled) == _records(inline)


def test_dask_local_cluster_gives_the_same_study_as_inline(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    inline = _new(tmp_path, "inline")
    inline.run(BowlEvaluator(inline.space.to_dict()))
    on_dask = _new(tmp_path, "dask")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        with open_executor(url=cluster.scheduler_address) as executor:
            on_dask.run(BowlEvaluator(on_dask.space.to_dict()), executor=executor, parallelism=3)
    assert _records(on_dask) == _records(inline)


def test_bad_executor_urls_and_job_counts():
    with pytest.raises(ConfigError, match="dask://HOST:PORT"):
        with open_executor(url="http://x:1"):
            pass
    with pytest.raises(ConfigError, match="--jobs must be >= 1"):
        with open_executor(jobs=0):
            pass

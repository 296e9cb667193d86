"""The tuner acts on the step-time model's training domain (issue 14 part 4): every evaluation
carries its domain status, out-of-domain candidates are refused or ranked pessimistically and
labelled, candidates without a modelled difference are merged, a near-best default is said, and
the main job's default workload is one the engine default serves. Real Parquet store, real
MLflow SQLite registry, real trained models, the real simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _helpers_models import synthetic_traces

from servetune.data import TraceStore, Workspace, resolve_workload
from servetune.models import StepTimeModel, TrainConfig, train_step_time_model
from servetune.tuner import SearchSpace
from servetune.tuner._candidates import candidate_notes, default_near_best
from servetune.tuner._evaluators import SimulatorEvaluator, engine_defaults
from servetune.tuner._job import (
    DEFAULT_OBJECTIVE,
    DEFAULT_SPACE,
    DEFAULT_WORKLOAD,
    TuneSettings,
    run_tune,
)
from servetune.tuner._objective import DOMAIN_METRIC_KEYS, DomainRule, parse_objective

# prompts longer than a 512- or 1024-token budget, a load inside the synthetic traces' step
# ranges for those budgets (<= 5 % of steps outside); a 16384 budget prefills in one step, which
# the model extrapolates flat: the best TTFT, out of domain
WORKLOAD = "poisson:rate=15,n=120,input=uniform:1500:3000,output=uniform:10:40"
OUT_OF_RANGE = 16384  # max_batch_tokens far above every trained mode's (<= 2048)
SPACE = f"""
name = "domain-test"
engine = "transformers-cb"
[params.max_batch_tokens]
type = "enum"
choices = [512, 1024, {OUT_OF_RANGE}]
[params.max_requests_per_batch]
type = "enum"
choices = [16, 32]
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuner-domain")
    ws = Workspace.resolve(root / "ws")
    steps, runs = synthetic_traces(n_runs=8, steps_per_run=250, seed=0)
    runs["num_blocks"] = [400 + 100 * i for i in range(len(runs))]
    TraceStore.for_workspace(ws).ingest({"steps": steps, "runs": runs}, source="generated",
                                        sha256="generated-tuner-domain", format="test")
    result = train_step_time_model(ws, config=TrainConfig(n_trials=1, cv_splits=2,
                                                           search_budget_s=20),
                                   progress=False)
    model = StepTimeModel.load(result.model_uri, tracking_uri=ws.tracking_uri)
    space_file = root / "space.toml"
    space_file.write_text(SPACE)
    return ws, model, space_file


def _base_config(model) -> dict:
    """A trained mode with a KV cache inside that mode's trained range."""
    key, mode = next(iter(model.domain.modes.items()))
    async_batching, cuda_graph = (part.split("=")[1] == "1" for part in key.split(","))
    lo, hi = mode["cache_tokens"]
    return {"block_size": 32, "num_blocks": int((lo + hi) / 2) // 32,
            "async_batching": async_batching, "cuda_graph": cuda_graph}


def _tune(workspace, domain: str, name: str) -> dict:
    ws, model, space_file = workspace
    settings = TuneSettings(space=str(space_file), workload=WORKLOAD,
                            objective="goodput:ttft_ms=50,tpot_ms=100", optimizer="grid",
                            particles=6, top_k=12, study=name, track=False,
                            base_config=_base_config(model), domain=domain)
    return run_tune(ws, settings, progress=False)


def _outside(candidate: dict) -> bool:
    return candidate["domain"]["status"] == "outside"


def test_every_evaluation_carries_its_domain_status(workspace):
    _, model, _ = workspace
    space = SearchSpace.builtin("transformers-cb")
    evaluator = SimulatorEvaluator.for_space(space, resolve_workload(WORKLOAD, seed=0),
                                             model.compile(), base_config=_base_config(model))
    inside = evaluator({"max_batch_tokens": 512, "max_requests_per_batch": 64})
    outside = evaluator({"max_batch_tokens": OUT_OF_RANGE, "max_requests_per_batch": 64})
    assert set(DOMAIN_METRIC_KEYS) <= set(inside)
    assert inside["domain_extrapolations"] == 0 and inside["domain_worst_ratio"] >= 1.0
    assert 0.0 <= inside["domain_share_outside"] <= 1.0
    assert outside["domain_extrapolations"] >= 1
    assert outside["domain_reasons"] >= outside["domain_extrapolations"]
    rule = DomainRule()
    assert rule.status(inside) == "inside" and rule.status(outside) == "outside"
    report = evaluator.domain_report({"max_batch_tokens": OUT_OF_RANGE})
    assert any(f"max_batch_tokens {OUT_OF_RANGE}" in r for r in report["reasons"])
    import pickle

    clone = pickle.loads(pickle.dumps(evaluator))  # the domain travels to worker processes
    assert clone({"max_batch_tokens": 512, "max_requests_per_batch": 64}) == inside


def test_strict_refuses_out_of_domain_candidates_and_labels_them(workspace):
    ignored = _tune(workspace, "ignore", "d-ignore")
    strict = _tune(workspace, "strict", "d-strict")
    tuned = [c for c in ignored["candidates"] if not c["baseline"]]
    # ignore: every distinct candidate (up to merges), ranked on the raw objective, labelled;
    # the extrapolated budget looks best
    assert _outside(tuned[0]) and tuned[0]["config"]["max_batch_tokens"] == OUT_OF_RANGE
    assert any(not _outside(c) for c in tuned)
    assert [c["objective"] for c in tuned] == sorted((c["objective"] for c in tuned),
                                                     reverse=True)
    for c in tuned:
        assert c["domain"]["status"] in ("inside", "outside")
        out_of_range = c["config"]["max_batch_tokens"] == OUT_OF_RANGE
        assert _outside(c) == out_of_range, c["domain"]
        if out_of_range:
            assert any(f"max_batch_tokens {OUT_OF_RANGE}" in r for r in c["domain"]["reasons"])
            assert c["domain"]["message"].startswith("outside the model's training data")
    # strict: none of them is a candidate while inside ones exist
    picked = [c for c in strict["candidates"] if not c["baseline"]]
    assert picked and not any(_outside(c) for c in picked)
    assert strict["best"]["config"]["max_batch_tokens"] != OUT_OF_RANGE
    assert strict["best"]["domain"]["status"] == "inside"
    assert strict["domain"]["mode"] == "strict" and strict["domain"]["outside_evaluations"] > 0
    assert any("refused as candidates" in n for n in strict["notes"])
    # the engine default (max_batch_tokens 8192) is labelled too
    base = strict["baseline"]
    assert base["domain"]["status"] == "outside" and any(
        "engine default is outside" in n for n in strict["notes"])
    # every output carries the label: candidates.json, candidates.md, the report
    folder = Path(strict["study"]["path"])
    saved = json.loads((folder / "candidates.json").read_text())
    assert [c["domain"]["status"] for c in saved] == [c["domain"]["status"]
                                                       for c in strict["candidates"]]
    md = (folder / "candidates.md").read_text()
    assert "| domain |" in md and "## Domain" in md
    from servetune.tuner._report import render_report

    html = render_report(folder)
    assert "<th>domain</th>" in html and "engine default is outside" in html
    assert "domain" in strict["study"]["evaluator"]  # resume keeps the rule


def test_penalise_ranks_by_the_pessimistic_estimate(workspace):
    result = _tune(workspace, "penalise", "d-penalise")
    tuned = [c for c in result["candidates"] if not c["baseline"]]
    assert any(_outside(c) for c in tuned) and not _outside(tuned[0])
    for c in tuned:
        if _outside(c):  # the lower of half and the objective at the interval's slow end
            assert c["slow_end_objective"] is not None
            expected = min(c["objective"] * 0.5, c["slow_end_objective"])
        else:
            assert c["slow_end_objective"] is None
            expected = c["objective"]
        assert c["ranked_objective"] == pytest.approx(expected)
    ranked = [c["ranked_objective"] for c in tuned]
    assert ranked == sorted(ranked, reverse=True)


def test_strict_falls_back_to_outside_candidates_when_none_is_inside():
    rule = DomainRule("strict")
    assert rule.ranked(2.0, {"domain_extrapolations": 1.0}) == 1.0
    assert rule.ranked(-2.0, {"domain_extrapolations": 1.0}) == -4.0  # pessimistic below 0
    assert rule.status({"domain_extrapolations": 0.0, "domain_share_outside": 0.2}) == "outside"
    assert rule.status({"domain_extrapolations": 0.0, "domain_share_outside": 0.01}) == "inside"
    assert rule.status({"goodput_rps": 1.0}) == "unknown"
    with pytest.raises(Exception, match="strict, penalise, ignore"):
        DomainRule("lenient")


def test_knobs_without_modelled_effect_are_merged(workspace):
    result = _tune(workspace, "ignore", "d-merge")
    tuned = [c for c in result["candidates"] if not c["baseline"]]
    configs = [c["config"] for c in tuned] + [m for c in tuned for m in c["merged"]]
    assert len(configs) == 6  # the whole grid is accounted for
    # at this load no step holds 16 requests: max_requests_per_batch changes nothing
    merged = [c for c in tuned if c["merged"]]
    assert merged and all(set(c["no_effect"]) == {"max_requests_per_batch"} for c in merged)
    for c in merged:
        assert sorted(c["no_effect"]["max_requests_per_batch"]) == [16, 32]
        assert "*" in result["table"]
    assert "no modelled effect" in result["table"]
    assert any("max_requests_per_batch no modelled effect" in n for n in result["notes"])
    # identical metrics, but different domain status, are never merged
    assert all(_outside(c) == (c["config"]["max_batch_tokens"] == OUT_OF_RANGE) for c in tuned)


def test_the_near_best_default_is_said():
    def cand(objective, baseline=False):
        return {"label": "baseline" if baseline else "#1", "baseline": baseline,
                "objective": objective, "domain": {"status": "inside"}, "merged": [],
                "no_effect": {}}

    near = [cand(1.02), cand(1.0, baseline=True)]
    far = [cand(1.5), cand(1.0, baseline=True)]
    assert default_near_best(near) and not default_near_best(far)
    assert not default_near_best(near, tolerance=0.01)
    assert any("the default is already near-best" in n for n in candidate_notes(near))
    assert not any("near-best" in n for n in candidate_notes(far))


def test_a_light_load_study_says_the_default_is_near_best(workspace):
    result = _tune(workspace, "ignore", "d-near")
    base = result["baseline"]["objective"]
    best = result["best"]["objective"]
    interval = result["candidates"][0].get("interval") or {}
    expected = (base >= interval["objective"][0] if interval.get("calibrated")
                else best - base <= 0.05 * abs(best))
    assert result["near_best"] == expected
    if result["near_best"]:
        assert any(n.startswith("the default is already near-best") for n in result["notes"])


def test_the_default_workload_is_served_by_the_engine_default(tmp_path):
    """The main job's default: the bundled H200 sample's champion, the default space's engine
    default, the default workload and SLOs (the issue measured a 467 s TTFT p90 baseline)."""
    from servetune.models import ensure_champion

    ws = Workspace.resolve(tmp_path / "ws")
    model = StepTimeModel.load(ensure_champion(ws), tracking_uri=ws.tracking_uri)
    space = SearchSpace.builtin(DEFAULT_SPACE)
    workload = resolve_workload(DEFAULT_WORKLOAD, seed=0)
    objective = parse_objective(DEFAULT_OBJECTIVE)
    evaluator = SimulatorEvaluator.for_space(space, workload, model.compile(),
                                             slo=objective.slo)
    metrics = evaluator(space.baseline_config(engine_defaults(space.engine)))
    rate = len(workload) / float(workload.arrival_s[-1] - workload.arrival_s[0])
    assert metrics["ttft_p90_ms"] < 5000.0, metrics
    assert metrics["tpot_p90_ms"] < objective.slo.tpot_ms, metrics
    assert metrics["goodput_rps"] > 0.9 * rate, (metrics["goodput_rps"], rate)


def test_best_first_refines_only_the_outside_evaluations_that_reach_the_front():
    """The slow-end objective is simulated lazily; the order is the one of refining them all."""
    from types import SimpleNamespace

    from servetune.tuner._candidates import _best_first

    outside = {"domain_extrapolations": 1.0}
    inside = {"domain_extrapolations": 0.0, "domain_share_outside": 0.0}
    records = [SimpleNamespace(index=i, score=s, metrics=m, config={"i": i})
               for i, (s, m) in enumerate([(10.0, outside), (8.0, outside), (4.5, inside),
                                           (3.0, outside), (1.0, inside)])]
    # evaluation 0 collapses at the slow end (near saturation), 1 barely moves
    slow_end = {0: 2.0, 1: 7.0, 3: 2.9}
    calls = []

    def slow_objective(config):
        calls.append(config["i"])
        return slow_end[config["i"]]

    rule = DomainRule("penalise")
    ranked = [(r, rule.status(r.metrics), rule.ranked(r.score, r.metrics)) for r in records]
    first = []
    for record, status, score, slow in _best_first(ranked, rule, slow_objective):
        first.append((record.index, score, slow))
        if len(first) == 2:
            break
    # 1: min(8 x 0.5, 7) = 4.0 is below the inside 4.5; 0: min(5, 2) = 2
    assert first == [(2, 4.5, None), (1, 4.0, 7.0)]
    assert sorted(calls) == [0, 1]  # evaluation 3 (at most 1.5) never reached the front
    full = [(r.index, s) for r, _, s, _ in _best_first(ranked, rule, slow_objective)]
    assert full == [(2, 4.5), (1, 4.0), (0, 2.0), (3, 1.5), (4, 1.0)]

"""Tuning efficiency and wall time of the tuner on the built-in transformers-cb space.

1. The champion step-time model of the workspace (trained from the bundled samples if missing)
   drives the simulator on the first N requests of the real Splitwise conversation trace.
2. Exhaustive grid: every point of the discretised space is simulated once (the reference
   optimum).
3. PSO, random search (servetune's Study with each optimiser) and Optuna's TPE, each with the
   same budget of proposed configurations, over several seeds. Every configuration any of them
   proposes is a grid point, so their scores are looked up in the grid's results: exactly the
   values the simulator returns (it is deterministic), without re-simulating.
4. Wall time: a fresh PSO study (30 particles x 20 iterations by default) on the real simulator
   through a process pool, and the same through the ``servetune tune`` command.

Run:  python benchmarks/tune_efficiency.py --workspace /tmp/st-bench --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import servetune
from servetune.data import Workspace, resolve_workload
from servetune.data._benchmark_record import RESULTS_DIR, write_record
from servetune.tuner import (
    SearchSpace,
    SimulatorEvaluator,
    Study,
    config_key,
    open_executor,
    parse_objective,
)

SPLITWISE = Path(servetune.__file__).resolve().parent.parent / "shared/workloads/splitwise_conv.csv"


class LookupEvaluator:
    """Metrics of grid points already simulated (the simulator is deterministic)."""

    def __init__(self, table: dict[str, dict]) -> None:
        self.table = table

    def __call__(self, config: dict) -> dict:
        return self.table[config_key(config)]


def evaluate_grid(space, evaluator, jobs):
    configs = [space.resolve(t) for t in space.grid()]
    assert all(p.feasible for p in configs)
    unique = {config_key(p.config): p.config for p in configs}
    keys = list(unique)
    started = time.perf_counter()
    with open_executor(jobs) as executor:
        if executor is None:
            results = [evaluator(unique[k]) for k in keys]
        else:
            chunks = np.array_split(np.arange(len(keys)), jobs * 8)
            futures = [executor.submit(_chunk, evaluator, [unique[keys[i]] for i in c])
                       for c in chunks if len(c)]
            results = [m for f in futures for m in f.result()]
    return dict(zip(keys, results)), time.perf_counter() - started


def _chunk(evaluator, configs):
    return [evaluator(c) for c in configs]


def run_study(space, objective, optimizer, seed, table, folder) -> tuple[float, int, int]:
    study = Study.create(folder, space=space, objective=objective, optimizer=optimizer,
                         seed=seed)
    study.run(LookupEvaluator(table))
    distinct = len({config_key(r.config) for r in study.records})
    return study.best().score, distinct, len(study.records)


def best_within_simulations(scored: list[tuple[str, float]], budget: int) -> tuple[float, int]:
    """Best score among proposals until ``budget`` distinct configurations were simulated
    (repeats of a configuration cost nothing: the study serves them from its cache)."""
    seen: set[str] = set()
    best = -float("inf")
    for key, score in scored:
        if key not in seen:
            if len(seen) == budget:
                break
            seen.add(key)
        best = max(best, score)
    return best, len(seen)


def study_scores(space, objective, optimizer, seed, table, folder) -> list[tuple[str, float]]:
    study = Study.create(folder, space=space, objective=objective, optimizer=optimizer,
                         seed=seed)
    study.run(LookupEvaluator(table))
    return [(config_key(r.config), r.score) for r in study.records]


def run_tpe(space, objective, seed, budget, table, distinct_budget: bool = False
            ) -> tuple[float, int, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def trial_config(trial):
        tunables = {}
        for p in space.params:
            if p.kind == "int":
                tunables[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high),
                                                     step=int(p.step or 1))
            elif p.kind == "bool":
                tunables[p.name] = trial.suggest_categorical(p.name, [False, True])
            else:
                tunables[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        return space.resolve(tunables).config

    scored: list[tuple[str, float]] = []
    seen: set[str] = set()

    def objective_fn(trial):
        key = config_key(trial_config(trial))
        scored.append((key, objective.score(table[key])))
        seen.add(key)
        if distinct_budget and len(seen) >= budget:
            trial.study.stop()
        return scored[-1][1]

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective_fn, n_trials=budget * 3 if distinct_budget else budget)
    if distinct_budget:
        best, n = best_within_simulations(scored, budget)
        return best, n, len(scored)
    return study.best_value, len(seen), budget


def summarise(values: list[float], best: float) -> dict:
    gaps = [(best - v) / best * 100 for v in values]
    q1, q3 = np.percentile(values, [25, 75])
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": float(q1), "q3": float(q3), "median_gap_pct": statistics.median(gaps),
            "max_gap_pct": max(gaps), "within_1pct": sum(g <= 1.0 for g in gaps),
            "runs": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=os.environ.get("SERVETUNE_WORKSPACE",
                                                              "/tmp/servetune-bench"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--qps", type=float, default=None,
                        help="rescale the trace's arrivals to this mean rate")
    parser.add_argument("--objective", default="goodput:ttft_ms=5000,tpot_ms=150")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--particles", type=int, default=20,
                        help="PSO swarm size for the efficiency runs (budget/particles iters)")
    parser.add_argument("--wall-particles", type=int, default=30)
    parser.add_argument("--wall-iterations", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--grid-cache", default=None,
                        help="JSON file of the grid's simulated metrics: read when it matches "
                             "this model version, workload and space, else written")
    args = parser.parse_args()

    from servetune.models import StepTimeModel, ensure_champion

    ws = Workspace.resolve(args.workspace)
    t0 = time.perf_counter()
    uri = ensure_champion(ws)
    model = StepTimeModel.load(uri, tracking_uri=ws.tracking_uri)
    compiled = model.compile()
    champion_s = time.perf_counter() - t0
    n_trees = int(len(compiled.forest.roots)) if hasattr(compiled, "forest") else None
    workload = resolve_workload(str(SPLITWISE), limit=args.requests, qps=args.qps)
    space = SearchSpace.builtin("transformers-cb")
    objective = parse_objective(args.objective)
    evaluator = SimulatorEvaluator.for_space(space, workload, compiled, slo=objective.slo)
    t0 = time.perf_counter()
    evaluator(space.resolve(space.default_tunables()).config)  # JIT warm-up before forking
    warmup_s = time.perf_counter() - t0

    identity = {"model": f"{model.name}/{model.version}", "requests": len(workload),
                "qps": args.qps, "space": space.fingerprint(), "slo": [objective.slo.ttft_ms,
                                                                     objective.slo.tpot_ms]}
    cache = Path(args.grid_cache) if args.grid_cache else None
    if cache and cache.exists() and json.loads(cache.read_text())["identity"] == identity:
        saved = json.loads(cache.read_text())
        table, grid_s = saved["table"], saved["seconds"]
    else:
        table, grid_s = evaluate_grid(space, evaluator, args.jobs)
        if cache:
            cache.write_text(json.dumps({"identity": identity, "seconds": grid_s,
                                         "table": table}))
    scores = {k: objective.score(m) for k, m in table.items()}
    best_key = max(scores, key=scores.get)
    grid_best = scores[best_key]
    print(f"grid: {len(table)} configurations in {grid_s:.1f} s; best {grid_best:.4f} "
          f"{best_key}", file=sys.stderr)

    results: dict = {"pso": [], "random": [], "tpe": []}
    distinct: dict = {"pso": [], "random": [], "tpe": []}
    by_sims: dict = {"pso": [], "random": [], "tpe": []}
    sims: dict = {"pso": [], "random": [], "tpe": []}
    proposals: dict = {"pso": [], "random": [], "tpe": []}
    iterations = args.budget // args.particles
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for name, spec in (("pso", {"name": "pso", "particles": args.particles,
                                        "iterations": iterations}),
                               ("random", {"name": "random", "budget": args.budget,
                                           "batch_size": args.particles})):
                score, n_distinct, n = run_study(space, objective, spec, seed, table,
                                                 Path(tmp) / f"{name}-{seed}")
                assert n == args.budget, (name, n)
                results[name].append(score)
                distinct[name].append(n_distinct)
            score, n_distinct, _ = run_tpe(space, objective, seed, args.budget, table)
            results["tpe"].append(score)
            distinct["tpe"].append(n_distinct)
            print(f"seed {seed}: " + "  ".join(f"{k} {v[-1]:.4f}" for k, v in results.items()),
                  file=sys.stderr)
            # equal number of *simulations*: run on until `budget` distinct configurations
            for name, spec in (("pso", {"name": "pso", "particles": args.particles,
                                        "iterations": 10 * iterations}),
                               ("random", {"name": "random", "budget": 3 * args.budget,
                                           "batch_size": args.particles})):
                scored = study_scores(space, objective, spec, seed, table,
                                      Path(tmp) / f"sim-{name}-{seed}")
                score, n_sims = best_within_simulations(scored, args.budget)
                by_sims[name].append(score)
                proposals[name].append(len(scored))
                sims[name].append(n_sims)
            score, n_sims, n_props = run_tpe(space, objective, seed, args.budget, table,
                                             distinct_budget=True)
            by_sims["tpe"].append(score)
            sims["tpe"].append(n_sims)
            proposals["tpe"].append(n_props)

    # wall time: fresh PSO studies on the real simulator (no lookups): inline, then through a
    # process pool (its workers start from a forkserver and JIT-compile the simulator first)
    wall = {}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in sorted({1, args.jobs}):
            study = Study.create(Path(tmp) / f"wall-{jobs}", space=space, objective=objective,
                                 seed=0, optimizer={"name": "pso",
                                                    "particles": args.wall_particles,
                                                    "iterations": args.wall_iterations})
            t0 = time.perf_counter()
            with open_executor(jobs) as executor:
                study.run(evaluator, executor=executor, parallelism=jobs)
            wall[f"jobs{jobs}_s"] = time.perf_counter() - t0
            wall["simulated"] = sum(1 for r in study.records if not r.cached)
            wall["best"] = study.best().score
    cli = None
    if not args.skip_cli:
        cmd = [str(Path(sys.executable).parent / "servetune"), "--workspace", str(ws.root), "tune",
               "--workload", str(SPLITWISE), "--limit", str(args.requests),
               "--particles", str(args.wall_particles), "--iterations",
               str(args.wall_iterations), "--objective",
               args.objective, "--study", f"bench-{int(time.time())}", "--json"]
        if args.qps:
            cmd += ["--qps", str(args.qps)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        cli_s = time.perf_counter() - t0
        doc = json.loads(proc.stdout)
        cli = {"command": "servetune " + " ".join(cmd[1:]), "wall_s": cli_s,
               "inner_wall_s": doc["wall_s"],
               "best": doc["best"]["objective"], "baseline": doc["baseline"]["objective"]}

    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "model_uri": uri, "pinned": f"{model.name}/{model.version}", "trees": n_trees,
        "champion_s": champion_s, "jit_warmup_s": warmup_s,
        "workload": {"requests": len(workload), "rate_rps": workload.rate_rps,
                     "qps": args.qps},
        "objective": objective.spec(), "grid": {"points": len(table), "seconds": grid_s,
                                               "best": grid_best, "best_config": best_key},
        "budget": args.budget, "seeds": args.seeds, "pso_particles": args.particles,
        "pso_iterations": iterations,
        "results": {k: summarise(v, grid_best) for k, v in results.items()},
        "raw": results, "distinct_configs": {k: statistics.median(v)
                                             for k, v in distinct.items()},
        "equal_simulations": {
            "results": {k: summarise(v, grid_best) for k, v in by_sims.items()},
            "raw": by_sims, "simulations_median": {k: statistics.median(v)
                                                   for k, v in sims.items()},
            "proposals_median": {k: statistics.median(v) for k, v in proposals.items()}},
        "wall": {"particles": args.wall_particles, "iterations": args.wall_iterations,
                 **wall, "cli": cli},
    }
    print(json.dumps(out, indent=1))
    path = Path(args.out) if args.out else RESULTS_DIR / "tune_efficiency.json"
    write_record(path.stem, out, args=args, results_dir=path.parent)


if __name__ == "__main__":
    main()

"""Simulator fidelity against the shipped H200 sample (transformers continuous batching).

1. Train a step-time model (``models.StepTimeRegressor``) on the steps of the TRAINING
   configurations only (graph-capture warm-up steps excluded, as ``servetune train`` does).
2. For every run of the HELD-OUT configurations, replay its own recorded requests (arrival_s,
   input and output tokens from the requests table) through the simulator with the run's
   resolved engine configuration (the ``runs.config`` JSON), and compare mean TTFT, mean TPOT
   and output throughput with what was measured.
3. Put the errors beside the measured run-to-run spread of the configurations measured three
   times (the noise floor), and give the Spearman rank correlation of simulated vs measured
   order of the held-out configurations per workload.

4. Sensitivity: every held-out run is simulated again with ``--sensitivity-ms`` (default 0.5 ms,
   about 3 % of a decode step) added to every step, to show how far a small step-time error
   moves each metric.
5. With ``--repeats DIR`` (default: ``benchmarks/data/fidelity_repeats/`` when present), more
   measurements of held-out configurations (``benchmarks/fidelity_repeats_sweep.toml`` and
   ``fidelity_repeats_sweep2.toml``) join the
   noise floor, and each held-out run's simulation is also compared with the mean of all
   measurements of its configuration and workload.

Usage:
    python benchmarks/sim_fidelity.py [--samples DIR] [--repeats DIR] [--markdown OUT.md]
                                      [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

import servetune
from servetune.data import Workload
from servetune.features import (
    DEFAULT_FEATURE_SET,
    KNOB_COLUMNS,
    PREV_COLUMNS,
    RAW_COLUMNS,
    add_previous_step,
    graph_captured,
    join_knobs,
)
from servetune.models import CaptureCost, StepTimeRegressor
from servetune.models._engine_constants import (
    CAPTURE_KEYS,
    capture_fit,
    capture_terms,
    transformers_sim_config,
)
from servetune.models._search import search_hyperparameters
from servetune.tuner.simulator import Simulator

SAMPLES = Path(servetune.__file__).resolve().parent / "data" / "samples"
REPEATS = Path(__file__).resolve().parent / "data" / "fidelity_repeats"
# Held out: one repeated configuration, sync and async, both schedulers, CUDA graphs on and off,
# a small KV cache. Everything else (23 configurations) trains the step-time model.
HELD_OUT = ("g-fifo-512-bs64-sync", "g-fifo-1024-bs32-async", "g-pf-1024-bs256-sync",
            "g-fifo-512-bs64-async-smallkv", "e-pf-1024-bs64-async")
METRICS = (("ttft_mean_ms", "ttft_ms"), ("tpot_mean_ms", "tpot_ms"),
           ("output_throughput_tok_s", "output_throughput_tok_s"))


def sim_config(run: pd.Series) -> dict:
    """The simulator's transformers config from a measured run's resolved engine config."""
    return transformers_sim_config(json.loads(run["config"]))


def capture_noise(captures: pd.DataFrame, predicted_ms: np.ndarray, runs: pd.DataFrame,
                  fits: dict, repeat_factor: bool = True) -> dict[bool, tuple[float, float]]:
    """Per batching mode: the spread of measured capture costs around ``fits`` (from
    ``capture_fit``) as two log-normal coefficients of variation, ``(per capture, per run)``,
    the simulator's ``cuda_graph_capture_noise_cv`` and ``cuda_graph_capture_run_cv``. The log
    ratio measured / fitted cost of each capture is split into its run's mean (the run-level
    factor: its variance less the within-run variance's share in a run mean) and the rest."""
    A, mode, repeat = capture_terms(captures, runs, repeat_factor)
    extra = np.maximum(captures["duration_ms"].to_numpy() - predicted_ms, 1.0)
    out = {}
    for is_async in (False, True):
        a, b, c, d, f = fits[is_async]
        mine = mode == is_async
        cost = A[mine] @ np.array([a, b, c, d]) * np.where(repeat[mine], f, 1.0)
        frame = pd.DataFrame({"run": captures["run_id"].to_numpy()[mine],
                              "log_ratio": np.log(extra[mine] / np.maximum(cost, 1e-9))})
        per_run = frame.groupby("run")["log_ratio"].agg(["mean", "var", "size"]).dropna()
        within = float((per_run["var"] * (per_run["size"] - 1)).sum()
                       / (per_run["size"] - 1).sum())
        between = max(float(per_run["mean"].var()) - within * float((1 / per_run["size"]).mean()),
                      0.0)
        out[is_async] = (float(np.sqrt(np.expm1(within))), float(np.sqrt(np.expm1(between))))
    return out


def sim_config_with_capture(run: pd.Series,
                            fits: dict[bool, tuple[float, float, float, float, float]]) -> dict:
    """:func:`sim_config` plus the capture cost of ``fits`` (from
    ``servetune.models._engine_constants.capture_fit``) for the run's batching mode and token
    budget."""
    config = sim_config(run)
    fit = CaptureCost(*fits[bool(config["use_async_batching"])])
    config.update(zip(CAPTURE_KEYS, fit.config_values(config["max_batch_tokens"])))
    return config


def sample_frame(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The sample's labelled runs, requests, steps with knobs and previous steps, and per step
    whether it captured a CUDA graph."""
    runs = labelled_runs(root / "runs.parquet")
    frame = add_previous_step(join_knobs(pd.read_parquet(root / "steps.parquet"),
                                         runs))
    return runs, pd.read_parquet(root / "requests.parquet"), frame, graph_captured(frame)


def run_workload(requests: pd.DataFrame) -> tuple[Workload, float]:
    """A run's recorded requests as a workload, and its first arrival (the rebasing offset)."""
    r = requests.sort_values("arrival_s", kind="stable")
    w = Workload.from_arrays(r.arrival_s.to_numpy(), r.input_tokens.to_numpy(),
                             r.output_tokens.to_numpy(), name="replay")
    return w, float(r.arrival_s.min())


WARMUP_GAP_S = 30.0  # the collector's warm-up requests run this long before the clock starts


def with_warmup(workload: Workload, n: int) -> Workload:
    """The collector's ``n`` unrecorded warm-up requests (32 input, 4 output tokens, all at
    once; they capture the small graph shapes) ahead of the replayed requests."""
    if n == 0:
        return workload
    return Workload.from_arrays(
        np.concatenate([np.zeros(n), workload.arrival_s + WARMUP_GAP_S]),
        np.concatenate([np.full(n, 32), workload.input_tokens]),
        np.concatenate([np.full(n, 4), workload.output_tokens]), name="replay+warmup")


def simulated_metrics(result, offset: float, n_warmup: int) -> dict:
    """Mean TTFT/TPOT and output throughput of the replayed requests (warm-up ones dropped);
    the duration is measured from the run's clock start, as the collector's ``duration_s``."""
    real = slice(n_warmup, None)
    start = WARMUP_GAP_S if n_warmup else 0.0
    ttft = result.ttft_ms[real]
    tpot = result.tpot_ms[real]
    duration = float(np.nanmax(result.finish_s[real])) - start + offset
    return {"ttft_ms": float(np.nanmean(ttft)), "tpot_ms": float(np.nanmean(tpot)),
            "output_throughput_tok_s": int(result.workload.output_tokens[real].sum()) / duration,
            "steps": int(result.metrics["steps"])}


def simulate_replay(run: pd.Series, requests: pd.DataFrame, fits: dict, compiled, n_warmup: int,
                    seed: int = 0, record_steps: bool = False, **overrides) -> tuple[dict, object]:
    """Replay ``run``'s own recorded requests (after ``n_warmup`` collector warm-up requests)
    through the simulator with its engine configuration, the capture cost of ``fits`` and
    ``overrides``: (:func:`simulated_metrics`, the simulator's result)."""
    workload, offset = run_workload(requests[requests.run_id == run.run_id])
    config = {**sim_config_with_capture(run, fits), **overrides}
    result = Simulator("transformers", config, compiled).run(
        with_warmup(workload, n_warmup), seed=seed, record_steps=record_steps)
    return simulated_metrics(result, offset, n_warmup), result


def labelled_runs(path: Path) -> pd.DataFrame:
    """A runs table with ``config_name`` and ``workload_name`` columns."""
    runs = pd.read_parquet(path)
    runs["config_name"] = runs["extra"].map(lambda e: json.loads(e)["config_name"])
    runs["workload_name"] = runs["workload"].map(lambda w: json.loads(w)["name"])
    return runs


def noise_floor(runs: pd.DataFrame) -> pd.DataFrame:
    """Per repeated (configuration, workload): each metric's relative deviation of single runs
    from their group mean (mean and max over the runs), in %."""
    rows = []
    for (name, workload), group in runs.groupby(["config_name", "workload_name"]):
        if len(group) < 2:
            continue
        row = {"config": name, "workload": workload, "runs": len(group)}
        for column, label in METRICS:
            values = group[column].to_numpy(dtype=float)
            dev = np.abs(values / values.mean() - 1) * 100
            row[f"{label}_mean_dev_%"] = dev.mean()
            row[f"{label}_max_dev_%"] = dev.max()
        rows.append(row)
    return pd.DataFrame(rows)


def others_mean_within(runs: pd.DataFrame, measured: pd.DataFrame, limit_pct: float = 10.0
                       ) -> dict:
    """A noise ceiling: predict each run by the mean of the OTHER measurements of its
    configuration and workload (what a simulator exact in expectation, with that mean known, would
    print). Per run, the largest of the three metric errors; and how many runs have all three
    within ``limit_pct``."""
    worst = {}
    for _, run in runs.iterrows():
        others = measured[(measured.config_name == run.config_name)
                          & (measured.workload_name == run.workload_name)
                          & (measured.run_id != run.run_id)]
        if len(others):
            worst[run.run_id] = max(abs(float(others[c].mean()) / float(run[c]) - 1) * 100
                                    for c, _ in METRICS)
    return {"runs_with_other_measurements": len(worst),
            "all_three_within": int(sum(v <= limit_pct for v in worst.values())),
            "largest_error_%_by_run": {_run_label(k): round(v, 1) for k, v in worst.items()}}


def train_step_model(train: pd.DataFrame, feature_set: str, search_trials: int,
                     seed: int) -> StepTimeRegressor:
    """The step-time model on ``train``'s steps, hyperparameters searched as `servetune train`."""
    X, y, groups = (train[[*RAW_COLUMNS, *PREV_COLUMNS, *KNOB_COLUMNS]],
                    train["duration_ms"].to_numpy(), train["run_id"].to_numpy())
    base = StepTimeRegressor(feature_set=feature_set, n_jobs=1, random_state=seed)
    if search_trials > 1:
        # a generous time budget so that every trial runs on a loaded machine too (determinism)
        base.set_params(**search_hyperparameters(base, X, y, groups, n_trials=search_trials,
                                                 seed=seed, time_budget_s=3600).best_params)
    return base.fit(X, y, groups=groups)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(SAMPLES))
    parser.add_argument("--repeats", default=str(REPEATS) if REPEATS.is_dir() else None,
                        help="collector output with more runs of held-out configurations")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-trials", type=int, default=6,
                        help="hyperparameter settings tried (as `servetune train`); 1: defaults")
    parser.add_argument("--collector-warmup", type=int, default=4,
                        help="warm-up requests the collector ran before each run's clock")
    parser.add_argument("--feature-set", default=DEFAULT_FEATURE_SET,
                        help="step-time model feature set (default: the shipped default)")
    parser.add_argument("--sensitivity-ms", type=float, default=0.5,
                        help="step time added in the sensitivity re-simulation (0: skip)")
    parser.add_argument("--all-runs", action="store_true",
                        help="simulate every run of the sample, not only the held-out ones "
                             "(with --in-sample: the simulator's own error over all runs)")
    parser.add_argument("--no-repeat-factor", action="store_true",
                        help="fit one capture cost for all captures (no cheaper capture of a "
                             "query and KV shape captured before)")
    parser.add_argument("--replications", type=int, default=32,
                        help="also simulate every run this many times (seeds 0..N-1) with the "
                             "capture-cost noise fitted on the training runs: mean and 10-90 %% "
                             "band of each metric, and whether the measurement lies in it "
                             "(0: skip)")
    parser.add_argument("--in-sample", action="store_true",
                        help="train on ALL runs (held-out ones too): isolates the simulator's "
                             "own error from the step-time model's")
    args = parser.parse_args(argv)
    root = Path(args.samples)
    runs, requests, frame, capture = sample_frame(root)
    repeats = (labelled_runs(Path(args.repeats) / "runs.parquet") if args.repeats
               else runs.iloc[:0])
    measured = pd.concat([runs, repeats], ignore_index=True)
    held = runs["config_name"].isin(HELD_OUT)
    train_ids = set(runs.loc[~held, "run_id"])

    if args.in_sample:
        train_ids = set(runs["run_id"])
    train = frame[frame.run_id.isin(train_ids) & ~capture & (frame.duration_ms > 0)]
    t = time.perf_counter()
    model = train_step_model(train, args.feature_set, args.search_trials, args.seed)
    train_s = time.perf_counter() - t
    compiled = model.compile()
    captures = frame[frame.run_id.isin(train_ids) & capture]
    captures_ms = model.predict(captures[[*RAW_COLUMNS, *PREV_COLUMNS, *KNOB_COLUMNS]])
    capture_cost = capture_fit(captures, captures_ms, runs,
                               repeat_factor=not args.no_repeat_factor)
    capture_spread = capture_noise(captures, captures_ms, runs, capture_cost,
                                   repeat_factor=not args.no_repeat_factor)
    simulated = runs if args.all_runs else runs[held]
    test = frame[frame.run_id.isin(set(simulated["run_id"])) & ~capture]
    pred = model.predict(test[[*RAW_COLUMNS, *PREV_COLUMNS, *KNOB_COLUMNS]])
    step_mape = float(np.mean(np.abs(pred / test["duration_ms"].to_numpy() - 1)) * 100)

    rows = []
    for _, run in simulated.iterrows():
        t = time.perf_counter()
        sim, result = simulate_replay(run, requests, capture_cost, compiled,
                                      args.collector_warmup, seed=args.seed, record_steps=True)
        sim_s = time.perf_counter() - t
        clock = WARMUP_GAP_S if args.collector_warmup else 0.0
        sim["steps"] = int((result.steps[:, 1] >= clock).sum())
        row = {"run_id": run.run_id, "config": run.config_name, "workload": run.workload_name,
               "measured_steps": int(json.loads(run["extra"])["steps"]),
               "sim_steps": sim["steps"], "sim_s": sim_s,
               "measured_captures": int(capture[frame.run_id == run.run_id].sum()),
               "sim_captures_total": result.metrics["graph_captures"]}
        # the step-time model on this run's measured (non-capture) steps: predicted / measured
        # busy time (what the simulator's clock would add up on the measured schedule)
        mine = (test.run_id == run.run_id).to_numpy()
        measured_busy = test["duration_ms"].to_numpy()[mine].sum()
        row["busy_time_ratio"] = float(pred[mine].sum() / measured_busy)
        if args.sensitivity_ms > 0:
            moved, _ = simulate_replay(run, requests, capture_cost, compiled,
                                       args.collector_warmup, seed=args.seed,
                                       step_overhead_ms=args.sensitivity_ms)
            for _, label in METRICS:
                row[f"{label}_sensitivity_%"] = (moved[label] / sim[label] - 1) * 100
        if args.replications > 0:
            row.update(replicated(run, requests, capture_cost, compiled, args,
                                  capture_spread[bool(run.async_batching)]))
        same = measured[(measured.config_name == run.config_name)
                        & (measured.workload_name == run.workload_name)]
        row["measurements"] = len(same)
        for column, label in METRICS:
            row[f"{label}_measured"] = float(run[column])
            row[f"{label}_sim"] = float(sim[label])
            row[f"{label}_err_%"] = (sim[label] / float(run[column]) - 1) * 100
            row[f"{label}_err_vs_mean_%"] = (sim[label] / float(same[column].mean()) - 1) * 100
        rows.append(row)
    table = pd.DataFrame(rows)
    within = {label: float((table[f"{label}_err_%"].abs() <= 10).mean())
              for _, label in METRICS}
    all_three_10 = float((table[[f"{l}_err_%" for _, l in METRICS]].abs() <= 10).all(axis=1).mean())
    all_three_5 = float((table[[f"{l}_err_%" for _, l in METRICS]].abs() <= 5).all(axis=1).mean())
    all_three_vs_mean = float((table[[f"{l}_err_vs_mean_%" for _, l in METRICS]].abs() <= 10)
                              .all(axis=1).mean())
    ranks = {}
    for workload, group in table.groupby("workload"):
        per_config = group.groupby("config").mean(numeric_only=True)
        for _, label in METRICS:
            rho = spearmanr(per_config[f"{label}_sim"], per_config[f"{label}_measured"]).statistic
            ranks[f"{workload}/{label}"] = float(rho)
    noise = noise_floor(measured)
    spread = {}
    if args.replications > 0:
        spread = {"replications": args.replications,
                  "share_all_three_within_10%_replication_mean": float(
                      (table[[f"{l}_rep_err_%" for _, l in METRICS]].abs() <= 10)
                      .all(axis=1).mean()),
                  "share_measured_inside_p10_p90": {
                      label: float(table[f"{label}_inside"].mean()) for _, label in METRICS}}
    report = {"held_out_configs": list(HELD_OUT), "in_sample_model": args.in_sample,
              "collector_warmup_requests": args.collector_warmup,
              "model_params": {k: v for k, v in model.get_params().items()
                               if k in ("max_depth", "learning_rate", "min_child_weight",
                                        "subsample")},
              "train_runs": len(train_ids),
              "held_out_runs": int(held.sum()), "simulated_runs": len(simulated),
              "train_steps": int(len(train)),
              "train_s": train_s, "n_trees": int(compiled.forest.n_trees),
              "capture_cost": {("async" if k else "sync"): dict(zip(
                  ("ms", "ms_per_query_token", "ms_per_kv_token", "ms_per_budget_token",
                   "repeat_factor"), v))
                  for k, v in capture_cost.items()},
              "capture_noise_cv": {("async" if k else "sync"):
                                   dict(zip(("per_capture", "per_run"), v))
                                   for k, v in capture_spread.items()},
              **spread,
              "held_out_step_mape_%": step_mape, "share_within_10%": within,
              "share_all_three_within_10%": all_three_10,
              "share_all_three_within_5%": all_three_5,
              "sensitivity_ms": args.sensitivity_ms,
              "repeats": args.repeats, "measured_runs_with_repeats": len(measured),
              "share_all_three_within_10%_of_the_measurement_mean": all_three_vs_mean,
              "noise_ceiling_mean_of_other_measurements": others_mean_within(simulated, measured),
              "spearman": ranks,
              "runs": table.to_dict(orient="records"),
              "noise_floor": noise.to_dict(orient="records")}
    pd.set_option("display.width", 200)
    print(table[["config", "workload", "measured_steps", "sim_steps", "measured_captures",
                 "sim_captures_total",
                 *[f"{l}_err_%" for _, l in METRICS]]].round(1).to_string(), file=sys.stderr)
    print(noise.round(1).to_string(), file=sys.stderr)
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "noise_floor")},
                     indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2, default=float))
    if args.markdown:
        Path(args.markdown).write_text(_markdown(table, noise, args.sensitivity_ms))
    return report


def replicated(run: pd.Series, requests: pd.DataFrame, fits: dict, compiled,
               args: argparse.Namespace, spread: tuple[float, float]) -> dict:
    """``args.replications`` seeded simulations of one run with capture-cost noise ``spread``
    (per capture, per run): per metric the mean, its error, the 10-90 % band, and whether the
    measured value lies inside it."""
    draws = [simulate_replay(run, requests, fits, compiled, args.collector_warmup, seed=seed,
                             cuda_graph_capture_noise_cv=spread[0],
                             cuda_graph_capture_run_cv=spread[1])[0]
             for seed in range(args.replications)]
    row = {}
    for column, label in METRICS:
        values = np.array([d[label] for d in draws])
        low, high = np.percentile(values, [10, 90])
        row[f"{label}_rep_mean"] = float(values.mean())
        row[f"{label}_rep_err_%"] = (values.mean() / float(run[column]) - 1) * 100
        row[f"{label}_p10"], row[f"{label}_p90"] = float(low), float(high)
        row[f"{label}_inside"] = bool(low <= float(run[column]) <= high)
    return row


def _run_label(run_id: str) -> str:
    """``h200a-CONFIG-WORKLOAD-rN-hash`` as ``CONFIG-WORKLOAD rN``."""
    name = run_id.split("-r")[0].removeprefix("h200a-").removeprefix("h200b-")
    return f"{name} r{run_id.split('-r')[-1][0]}"


def _markdown(table: pd.DataFrame, noise: pd.DataFrame, sensitivity_ms: float) -> str:
    lines = ["| held-out run | workload | steps meas/sim | TTFT meas → sim ms (err) | "
             "TPOT meas → sim ms (err) | out tok/s meas → sim (err) | err vs mean of n "
             f"measurements: TTFT / TPOT / tok/s (n) | +{sensitivity_ms:g} ms/step: TTFT / TPOT "
             "move |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for _, r in table.iterrows():
        cells = []
        for label, fmt in (("ttft_ms", "{:.0f}"), ("tpot_ms", "{:.1f}"),
                           ("output_throughput_tok_s", "{:.0f}")):
            cells.append(f"{fmt.format(r[f'{label}_measured'])} → {fmt.format(r[f'{label}_sim'])}"
                         f" ({r[f'{label}_err_%']:+.1f}%)")
        cells.append(" / ".join(f"{r[f'{label}_err_vs_mean_%']:+.1f}%" for label in
                                ("ttft_ms", "tpot_ms", "output_throughput_tok_s"))
                     + f" ({r.measurements})")
        cells.append(" / ".join(f"{r.get(f'{label}_sensitivity_%', float('nan')):+.1f}%"
                                for label in ("ttft_ms", "tpot_ms")))
        lines.append(f"| {_run_label(r.run_id)} | {r.workload} | "
                     f"{r.measured_steps}/{r.sim_steps} | " + " | ".join(cells) + " |")
    lines += ["", "| repeated config (noise floor) | workload | runs | TTFT dev mean/max % | "
              "TPOT dev mean/max % | out tok/s dev mean/max % |", "| --- | --- | ---: | ---: | "
              "---: | ---: |"]
    for _, r in noise.iterrows():
        cells = [f"{r[f'{l}_mean_dev_%']:.1f} / {r[f'{l}_max_dev_%']:.1f}"
                 for l in ("ttft_ms", "tpot_ms", "output_throughput_tok_s")]
        lines.append(f"| {r.config} | {r.workload} | {r.runs} | " + " | ".join(cells) + " |")
    if "ttft_ms_rep_mean" in table:
        lines += ["", "| held-out run | workload | TTFT meas → replication mean (err) [p10–p90] | "
                  "TPOT meas → mean (err) [p10–p90] | out tok/s meas → mean (err) [p10–p90] |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for _, r in table.iterrows():
            cells = []
            for label, fmt in (("ttft_ms", "{:.0f}"), ("tpot_ms", "{:.1f}"),
                               ("output_throughput_tok_s", "{:.0f}")):
                mark = "" if r[f"{label}_inside"] else " ✗"
                band = f"{fmt.format(r[f'{label}_p10'])}–{fmt.format(r[f'{label}_p90'])}"
                cells.append(f"{fmt.format(r[f'{label}_measured'])} → "
                             f"{fmt.format(r[f'{label}_rep_mean'])} "
                             f"({r[f'{label}_rep_err_%']:+.1f}%) [{band}]{mark}")
            lines.append(f"| {_run_label(r.run_id)} | {r.workload} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Simulator speed: the Splitwise conversation trace through every policy, on one core.

For each policy the same simulation runs twice, side by side in one process:

* ``compiled``: step times from the compiled forest inside the numba event loop (the normal path);
* ``booster``: the identical event loop, but every step's features go to XGBoost's
  ``Booster.inplace_predict`` (one call per step, through a numba object-mode block).

The model is the workspace champion (``--workspace``/``--model-uri``) or, without one, an XGBoost
model of ``--trees`` trees of depth ``--depth`` trained here on generated step traces (the
simulator's cost depends on the forest's size, not on what it learned).

Usage:
    python benchmarks/sim_speed.py [--trees 300 --depth 8] [--baseline-requests N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import servetune  # noqa: E402
from servetune.data import Workload  # noqa: E402
from servetune.data._benchmark_record import RESULTS_DIR, write_record  # noqa: E402
from servetune.features import get_feature_set  # noqa: E402
from servetune.models import CompiledForest, CompiledStepTime  # noqa: E402
from servetune.tuner.simulator import Simulator  # noqa: E402

TRACE = Path(servetune.__file__).resolve().parent.parent / "shared/workloads/splitwise_conv.csv"
# A synthetic model carries no engine constants: the hardware sizes the simulator assumed before
# models carried them (H200, llama-1b-like), so the runs are those of the earlier records.
_TF_HW = {"gpu_memory_gib": 140.0, "model_weights_gib": 2.3, "kv_bytes_per_token": 32768}
# the activation peak was the vLLM policy's code default (2 GiB) until it had to come from the
# configuration or the model: stated here so the figures stay comparable
_VLLM_HW = {"gpu_memory_gib": 140.0, "model_weights_gib": 2.5, "kv_bytes_per_token": 32768,
            "activation_gib": 2.0}
POLICIES = (("transformers", {"scheduler_type": "fifo", **_TF_HW}),
            ("transformers", {"scheduler_type": "prefill_first", **_TF_HW}),
            ("vllm", _VLLM_HW),
            ("static", {"max_batch_size": 64}))

# The booster the object-mode block calls (benchmark only: numba object mode reaches Python
# objects through module globals).
_BOOSTER: dict = {}


def _booster_margin(x: np.ndarray) -> float:
    return float(_BOOSTER["booster"].inplace_predict(x.reshape(1, -1))[0])


@numba.njit
def booster_predict_row(feature, threshold, left, right, default_left, value, roots, base_margin,
                        x):
    """``forest_predict_row``'s signature, answered by ``Booster.inplace_predict``."""
    with numba.objmode(margin="float64"):
        margin = _booster_margin(x)
    return margin


def synthetic_model(trees: int, depth: int, seed: int = 0):
    """An XGBoost log-duration model of generated steps, and its compiled form."""
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    n = 20000
    decode = rng.integers(0, 256, n)
    pseqs = rng.integers(0, 4, n)
    ptok = np.where(pseqs > 0, rng.integers(1, 8192, n), 0)
    kv = decode * rng.integers(100, 8000, n) + ptok
    df = pd.DataFrame({"num_seqs": decode + pseqs, "num_prefill_seqs": pseqs,
                       "num_decode_seqs": decode, "prefill_tokens": ptok, "decode_tokens": decode,
                       "kv_tokens_sum": kv, "kv_tokens_max": np.maximum(ptok, 8000),
                       "prefill_attn_work": ptok * ptok, "block_size": rng.choice([16, 256], n),
                       "async_batching": rng.integers(0, 2, n), "cuda_graph": rng.integers(0, 2, n),
                       "tp_size": 1})
    ms = (6.0 + 0.04 * df.num_seqs + 0.002 * (ptok + decode) + 8e-6 * kv
          + 1.5e-9 * df.prefill_attn_work) * np.exp(rng.normal(0, 0.03, n))
    fs = get_feature_set()
    booster = xgb.train({"max_depth": depth, "eta": 0.05, "nthread": 1, "seed": seed},
                        xgb.DMatrix(fs.frame(df), label=np.log(ms),
                                    feature_names=list(fs.feature_names)),
                        num_boost_round=trees)
    forest = CompiledForest.from_booster(booster, log_target=True, feature_set=fs.name,
                                         feature_set_version=fs.version)
    return booster, CompiledStepTime(forest, fs), f"synthetic ({trees} trees, depth {depth})"


def champion_model(workspace: str, model_uri: str | None):
    from servetune.data import Workspace
    from servetune.models import StepTimeModel, ensure_champion

    ws = Workspace.resolve(workspace)
    uri = model_uri or ensure_champion(ws)
    model = StepTimeModel.load(uri, tracking_uri=ws.tracking_uri)
    return model.booster, model.compile(), uri


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--workspace", default=None, help="use this workspace's champion")
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--baseline-requests", type=int, default=None,
                        help="requests of the trace for the side-by-side runs (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policy", action="append", default=None,
                        help="only these policies (transformers/fifo, transformers/prefill_first,"
                             " vllm, static); repeatable")
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this core")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="the record's path (default: benchmarks/results/<script>.json)")
    args = parser.parse_args(argv)
    cpu = args.cpu if args.cpu is not None else sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})

    if args.workspace:
        booster, compiled, model_name = champion_model(args.workspace, args.model_uri)
    else:
        booster, compiled, model_name = synthetic_model(args.trees, args.depth)
    booster.set_param({"nthread": 1})
    _BOOSTER["booster"] = booster
    trace = pd.read_csv(TRACE)
    full = Workload.from_arrays(trace.arrived_at, trace.num_prefill_tokens,
                                trace.num_decode_tokens, name="splitwise_conv")
    side = full.head(args.baseline_requests) if args.baseline_requests else full

    def label(engine: str, cfg: dict) -> str:
        return engine + (f"/{cfg['scheduler_type']}" if "scheduler_type" in cfg else "")

    policies = [(e, c) for e, c in POLICIES if not args.policy or label(e, c) in args.policy]
    t = time.perf_counter()
    for engine, cfg in policies:  # compile both loops once
        Simulator(engine, cfg, compiled).run(full.head(20))
        Simulator(engine, cfg, compiled, predict_row=booster_predict_row).run(full.head(20))
    compile_s = time.perf_counter() - t
    rss_before = peak_rss_mib()
    rows = []
    for engine, cfg in policies:
        fast = Simulator(engine, cfg, compiled)
        times, cpu_times = [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            result = fast.run(full, seed=0)
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
        rss_after_full = peak_rss_mib()
        t = time.perf_counter()
        side_fast = fast.run(side, seed=0)
        side_fast_s = time.perf_counter() - t
        t = time.perf_counter()
        side_slow = Simulator(engine, cfg, compiled, predict_row=booster_predict_row).run(side)
        side_slow_s = time.perf_counter() - t
        a, b = side_fast.metrics, side_slow.metrics
        row = {"policy": label(engine, cfg),
               "requests": len(full), "steps": result.metrics["steps"],
               "completed": result.metrics["completed"],
               "compiled_s_best": min(times), "compiled_s_all": times,
               # CPU time of the process: a loaded machine inflates it far less than wall time
               "compiled_cpu_s_best": min(cpu_times), "compiled_cpu_s_all": cpu_times,
               "us_per_step": min(times) / result.metrics["steps"] * 1e6,
               "side_requests": len(side), "side_steps": a["steps"],
               "side_compiled_s": side_fast_s, "side_booster_s": side_slow_s,
               "speedup": side_slow_s / side_fast_s,
               "ttft_mean_rel_diff": abs(a["ttft_ms"]["mean"] / b["ttft_ms"]["mean"] - 1),
               "same_steps": a["steps"] == b["steps"],
               "peak_rss_mib_after": rss_after_full}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report = {"model": model_name, "n_trees": int(compiled.forest.n_trees),
              "nodes": int(compiled.forest.feature.shape[0]), "compile_s": compile_s,
              "rss_mib_before_runs": rss_before, "peak_rss_mib": peak_rss_mib(), "cpu": cpu,
              "machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
              "numba": numba.__version__, "rows": rows}
    print(json.dumps(report, indent=2))
    out = Path(args.json_out) if args.json_out else RESULTS_DIR / "sim_speed.json"
    write_record(out.stem, report, args=args, results_dir=out.parent)
    return report


if __name__ == "__main__":
    main()

"""Simulator memory: peak RSS of simulating a long synthetic workload (default 1,000,000 requests).

Each measured run is a child process whose own peak RSS is read with ``os.wait4`` (one child's
``ru_maxrss``, not the maximum over every child). Two modes:

* ``cli``: ``servetune simulate --engine ENGINE --workload SPEC --json`` (the domain check and the
  80 % interval replays included, as a user runs it);
* ``api``: ``Simulator(engine, {}, model).run(workload).flat_metrics()`` in a bare interpreter
  (what a tuning study's evaluator does per candidate).

The step-time model is the workspace champion, trained from the bundled samples in a separate
child first when the workspace has none (not measured).

Usage:
    python benchmarks/sim_memory.py [--requests 1000000] [--rate 4] [--mode cli --mode api]
        [--workspace DIR] [--label before] [--json benchmarks/results/sim_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = ("num_requests", "completed", "steps", "duration_s", "request_throughput_rps",
            "output_throughput_tok_s", "ttft_mean_ms", "ttft_p90_ms", "tpot_mean_ms",
            "tpot_p90_ms", "itl_mean_ms", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms",
            "e2e_p90_ms")

_API_CHILD = """
import json, sys, time
from servetune.data import Workspace, synthetic_workload
from servetune.models import StepTimeModel, ensure_champion
from servetune.tuner.simulator import Simulator
ws = Workspace.resolve(sys.argv[1])
model = StepTimeModel.load(ensure_champion(ws), tracking_uri=ws.tracking_uri).compile()
workload = synthetic_workload(sys.argv[3], seed=0)
t = time.perf_counter()
# vLLM's activation peak is no code default any more: the 2 GiB the first measurements used
config = {"activation_gib": 2.0} if sys.argv[2] == "vllm" else {}
metrics = Simulator(sys.argv[2], config, model).run(workload, 0).flat_metrics()
print(json.dumps({"simulate_s": time.perf_counter() - t, "metrics": metrics}))
"""


def _child(argv: list[str], cwd: str) -> dict:
    """Run ``argv`` in ``cwd`` as a child; its wall time, its own peak RSS (MiB, ``os.wait4``),
    CPU time and the JSON it printed."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = _spawn_in(argv, cwd, out, err)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - t
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{' '.join(argv)} failed ({code}):\n{stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "output": json.loads(stdout)}


def _spawn_in(argv: list[str], cwd: str, out, err) -> int:
    """Fork/exec ``argv`` in ``cwd`` with stdout/stderr to the given files; returns the pid."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.chdir(cwd)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid


def _commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout
    head = git("rev-parse", "--short", "HEAD").strip()
    mine = ["tuner/simulator", "data/_metrics.py"]
    return head + ("-dirty" if git("status", "--porcelain", "--", *mine).strip() else "")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=4.0,
                        help="arrival rate (req/s); 4 keeps the default vLLM config below "
                             "saturation with the bundled H200 model")
    parser.add_argument("--engine", default="vllm")
    parser.add_argument("--mode", action="append", choices=("cli", "api"), default=None)
    parser.add_argument("--workspace", default=None,
                        help="workspace with a champion (default: a fresh temporary one)")
    parser.add_argument("--label", default="")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="append this record to the file's 'runs' list")
    args = parser.parse_args(argv)
    modes = args.mode or ["api", "cli"]
    workspace = args.workspace or tempfile.mkdtemp(prefix="sim-memory-")
    spec = f"poisson:rate={args.rate:g},n={args.requests}"
    exe = str(Path(sys.executable))
    servetune = str(Path(sys.executable).with_name("servetune"))
    t = time.perf_counter()
    _child([exe, "-c", "import json, sys; from servetune.data import Workspace; "
            "from servetune.models import ensure_champion; "
            "print(json.dumps(ensure_champion(Workspace.resolve(sys.argv[1]))))", workspace],
           workspace)
    setup_s = time.perf_counter() - t
    runs = []
    for mode in modes:
        if mode == "cli":
            argv_ = [servetune, "--workspace", workspace, "simulate", "--engine", args.engine,
                     "--workload", spec, "--json"]
        else:
            argv_ = [exe, "-c", _API_CHILD, workspace, args.engine, spec]
        got = _child(argv_, workspace)
        out = got.pop("output")
        metrics = out["metrics"]
        if mode == "cli":
            flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
            for name, stats in metrics.items():
                if isinstance(stats, dict) and name.endswith("_ms"):
                    flat.update({f"{name[:-3]}_{s}_ms": v for s, v in stats.items()})
            metrics = flat
        row = {"mode": mode, "command": " ".join(argv_[:1] + ["..."] if mode == "api" else
                                                 argv_).replace(workspace, "WS"),
               **got, "headline": {k: metrics.get(k) for k in HEADLINE}}
        if "simulate_s" in out:
            row["simulate_s"] = round(out["simulate_s"], 2)
        runs.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    record = {"benchmark": "sim_memory", "label": args.label, "commit": _commit(),
              "workload": spec, "engine": args.engine, "setup_s": round(setup_s, 1),
              "machine": {"nproc": os.cpu_count(), "cpu": _cpu_model(),
                          "python": platform.python_version(),
                          "load_1min": round(os.getloadavg()[0], 2)},
              "runs": runs}
    if args.json_out:
        from servetune.data._benchmark_record import write_record

        path = Path(args.json_out)
        doc = json.loads(path.read_text()) if path.exists() else {"records": []}
        doc = doc.get("figures", doc)  # a benchmark record keeps the list in its figures
        doc["records"].append(record)
        write_record(path.stem, doc, args=args, results_dir=path.parent)
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()

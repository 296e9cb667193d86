"""Start-up of ``servetune simulate``: a first process (cold numba cache) and a second one.

Each repeat gives numba a fresh, empty cache directory (``NUMBA_CACHE_DIR``, so neither the
repository's ``__pycache__`` nor the user cache are touched) and runs the same command twice,
one process after the other: the first compiles the simulation loop and stores it, the second
loads it. The workspace already holds its champion (a set-up run trains it once, untimed), so both
processes do the same work apart from compiling. Both print the same JSON; the script checks it.

Usage:
    python benchmarks/sim_startup.py [--repeats 3] [--workspace DIR] [--json OUT]
    PYTHONPATH=DIR python benchmarks/sim_startup.py ...   # DIR/servetune: another tree
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = REPO.parent / "shared/workloads/splitwise_conv.csv"
ARGS = ("simulate", "--engine", "transformers", "--set", "use_cuda_graph=true", "--workload")


def _command(workspace: Path, workload: Path) -> list[str]:
    script = Path(sys.executable).with_name("servetune")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "servetune.cli._main"]
    return [*head, "--workspace", str(workspace), *ARGS, str(workload), "--json"]


def _timed(command: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) and stdout of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _imported_from(env: dict) -> str:
    """The directory ``servetune`` is imported from in a child process (PYTHONPATH may point a
    run at another tree, e.g. a checkout of the commit before a change)."""
    done = subprocess.run([sys.executable, "-c", "import servetune; print(servetune.__file__)"],
                          env=env, capture_output=True, text=True)
    return str(Path(done.stdout.strip()).parent)


def _commit(tree: str) -> str:
    """``git describe`` of the checkout holding ``tree``, or "unknown" outside one."""
    done = subprocess.run(["git", "-C", tree, "describe", "--always", "--dirty"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workspace", type=Path, default=None,
                        help="workspace with (or to train) the champion; default: a temp dir")
    parser.add_argument("--workload", type=Path, default=WORKLOAD)
    parser.add_argument("--label", default="", help="what tree this is, for the record")
    parser.add_argument("--json", dest="json_out", type=Path,
                        default=REPO / "benchmarks/results/sim_startup.json")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="sim-startup-"))
    workspace = args.workspace or scratch / "ws"
    command = _command(workspace, args.workload)
    try:
        env = dict(os.environ, NUMBA_CACHE_DIR=str(scratch / "setup-cache"))
        setup_s, _, _ = _timed(command, env)  # trains the champion if the workspace has none
        rows = []
        for repeat in range(args.repeats):
            env = dict(os.environ, NUMBA_CACHE_DIR=str(scratch / f"cache-{repeat}"))
            load = os.getloadavg()[0]
            first_s, first_cpu, first_out = _timed(command, env)
            second_s, second_cpu, second_out = _timed(command, env)
            row = {"repeat": repeat, "load_1min_before": round(load, 2),
                   "first_s": round(first_s, 2), "first_cpu_s": round(first_cpu, 2),
                   "second_s": round(second_s, 2), "second_cpu_s": round(second_cpu, 2),
                   "same_output": first_out == second_out}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tree = _imported_from(dict(os.environ))
    report = {"benchmark": "sim_startup", "label": args.label, "servetune": tree,
              "commit": _commit(tree),
              "command": " ".join(["servetune", "--workspace", "WS", *ARGS, str(args.workload),
                                   "--json"]),
              "machine": {"nproc": len(os.sched_getaffinity(0)), "cpu": _cpu_model(),
                          "python": platform.python_version()},
              "setup_s": round(setup_s, 2), "rows": rows,
              "first_s_median": sorted(r["first_s"] for r in rows)[len(rows) // 2],
              "second_s_median": sorted(r["second_s"] for r in rows)[len(rows) // 2]}
    from servetune.data._benchmark_record import write_record  # after the timed children

    write_record(args.json_out.stem, report, args=args, results_dir=args.json_out.parent)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

"""Parallel dispatch efficiency: 8 candidates over 4 service groups vs 2 candidates on 1 group.

Both configurations run side by side in one process, interleaved ``--rounds`` times, against
real sshd test hosts on loopback (one per group; ``servetune.testing.SshKit``). Each candidate is
started over SSH in its own session, health-checked, warmed up, benchmarked with the first
``--requests`` requests of the real Splitwise conversation trace (rescaled to ``--qps``, output
lengths capped at ``--max-output``), and stopped. The served process is the scripted
OpenAI-compatible streaming server (``python -m servetune.testing.scripted_server``: fixed TTFT
and per-token pace, no model computation): this machine has 2 CPU cores, so real model servers in 4 groups would measure CPU contention rather
than the dispatcher, whereas on a GPU cluster every group has its own hardware.

With perfect parallelism 8 candidates over 4 groups take as long as 2 candidates on 1 group;
the figure reported is ``ratio = median(parallel) / median(sequential)`` (target <= 1.15).

Needs root and /usr/sbin/sshd. Usage:
    python benchmarks/hw_parallel.py [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import servetune
from servetune.data import Workload, resolve_workload
from servetune.data._benchmark_record import RESULTS_DIR, write_record
from servetune.testing import SshKit, free_port, session_alive, sshd_unavailable_reason
from servetune.tuner.hardware import (
    Candidate,
    ClientOptions,
    ClusterSpec,
    Dispatcher,
    DispatchOptions,
    NodeSpec,
    ServiceGroupSpec,
    SSHOptions,
    launcher_for,
)

TRACE = Path(servetune.__file__).resolve().parent.parent / "shared/workloads/splitwise_conv.csv"
SERVER = (sys.executable, "-m", "servetune.testing.scripted_server")


def workload(requests: int, qps: float, max_output: int) -> Workload:
    w = resolve_workload(str(TRACE), limit=requests, qps=qps)
    return Workload.from_arrays(w.arrival_s, np.minimum(w.input_tokens, 512),
                                np.minimum(w.output_tokens, max_output), name="splitwise-head",
                                descriptor={**w.descriptor, "max_output": max_output})


def run_once(kit: SshKit, hosts, n_groups: int, n_candidates: int, work: Path, wl: Workload,
             args) -> tuple[float, dict]:
    groups = tuple(
        ServiceGroupSpec(f"g{i}", (NodeSpec("127.0.0.1", port=hosts[i].port, user="root",
                                            key=kit.user_key, work_dir=str(work / f"g{i}")),),
                         service_port=free_port(),
                         start_command=(*SERVER, "--ttft-ms", str(args.ttft_ms),
                                        "--token-ms", str(args.token_ms)))
        for i in range(n_groups))
    cluster = ClusterSpec(groups=groups, engine="script", model="m", health_timeout_s=30,
                          candidate_timeout_s=120, stop_grace_s=5,
                          ssh=SSHOptions(known_hosts=kit.known_hosts, allow_agent=False))
    candidates = [Candidate(f"c{i}", {"variant": i}) for i in range(n_candidates)]
    dispatcher = Dispatcher(cluster, launcher_for("script"), wl, client=ClientOptions(model="m"),
                            options=DispatchOptions(warmup_requests=1))
    started = time.perf_counter()
    result = dispatcher.run(candidates)
    wall = time.perf_counter() - started
    failed = [o.reason for o in result.outcomes if o.status != "measured"]
    if failed:
        raise SystemExit(f"benchmark candidates failed: {failed}")
    sids = [sid for o in result.outcomes for a in o.attempts for _, sid in a.sessions]
    if any(session_alive(sid) for sid in sids):
        raise SystemExit("a benchmark service survived its stop")
    return wall, result.statistics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--qps", type=float, default=8.0)
    parser.add_argument("--max-output", type=int, default=32)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--token-ms", type=float, default=20.0)
    parser.add_argument("--json", default=None,
                        help="the record's path (default: benchmarks/results/hw_parallel.json)")
    args = parser.parse_args()
    reason = sshd_unavailable_reason()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    wl = workload(args.requests, args.qps, args.max_output)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        kit = SshKit.create(Path(tmp) / "kit")
        try:
            hosts = [kit.start_host(f"h{i}") for i in range(4)]
            sequential, parallel = [], []
            for r in range(args.rounds):
                sequential.append(run_once(kit, hosts, 1, 2, Path(tmp) / f"s{r}", wl, args)[0])
                parallel.append(run_once(kit, hosts, 4, 8, Path(tmp) / f"p{r}", wl, args)[0])
                print(f"round {r}: 2 candidates / 1 group {sequential[-1]:.2f}s, "
                      f"8 candidates / 4 groups {parallel[-1]:.2f}s", file=sys.stderr)
        finally:
            kit.close()
    out = {"sequential_2x1_s": sequential, "parallel_8x4_s": parallel,
           "median_sequential_s": statistics.median(sequential),
           "median_parallel_s": statistics.median(parallel),
           "ratio": statistics.median(parallel) / statistics.median(sequential),
           "workload": {"requests": len(wl), "duration_s": wl.duration_s,
                        "max_output": args.max_output},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(),
                       "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]]},
           "command": " ".join(["python", "benchmarks/hw_parallel.py", *sys.argv[1:]])}
    print(json.dumps(out, indent=2))
    path = Path(args.json) if args.json else RESULTS_DIR / "hw_parallel.json"
    write_record(path.stem, out, args=args, results_dir=path.parent)


if __name__ == "__main__":
    main()

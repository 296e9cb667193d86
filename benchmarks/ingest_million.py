"""Ingest a 1,000,000-request ``vllm bench serve --save-detailed`` result through the real CLI.

The result file is generated in vLLM's layout (``servetune.testing.write_vllm_result``: request
lengths drawn from the real Splitwise conversation trace, ~12.5 ms gamma-distributed ITLs,
generated texts), then ``servetune --workspace W ingest FILE --json`` runs as a child process;
its wall time and peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``; the generator runs in this
process, so the children's figure is the ingest alone) are reported. Side by side, on a 100,000-request file,
the same ingest is compared with a plain ``json.load`` of that file (the naive approach).

Usage:
    python benchmarks/ingest_million.py [--requests 1000000] [--workdir DIR] [--keep]
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

from servetune.testing import servetune_command, write_vllm_result

GIB = 1 << 30


def run_child(command: list[str]) -> tuple[float, float, int, str]:
    """Wall and CPU seconds, peak RSS in bytes and stdout of ``command``, run in isolation.

    ``ru_maxrss`` of RUSAGE_CHILDREN is a maximum over every child a process ever waited for,
    so each command runs under a fresh wrapper interpreter whose only child it is.
    """
    wrapper = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(command)]
    proc = subprocess.run(wrapper, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(command)}\n"
                         f"{proc.stderr}")
    measured = json.loads(proc.stdout)
    return measured["wall_s"], measured["cpu_s"], measured["peak_bytes"], measured["stdout"]


def child(command: list[str]) -> None:
    """Wrapper mode: run ``command`` as this process's only child; print its figures."""
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "peak_bytes": usage.ru_maxrss * 1024,  # KiB on Linux
                      "stdout": proc.stdout}))


def ingest(path: Path, workspace: Path) -> tuple[float, float, int, dict]:
    command = [*servetune_command(), "--workspace", str(workspace), "ingest", str(path),
               "--json"]
    wall, cpu, peak, stdout = run_child(command)
    return wall, cpu, peak, json.loads(stdout)["ingested"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--compare-requests", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="servetune-bench-", dir=args.workdir))
    try:
        # ---------------------------------------------------------------- side by side (small)
        small = workdir / "vllm_small.json"
        write_vllm_result(small, args.compare_requests, seed=1)
        naive_wall, naive_cpu, naive_peak, _ = run_child([sys.executable, "-c",
                                               "import json,sys; json.load(open(sys.argv[1]))",
                                               str(small)])
        small_wall, small_cpu, small_peak, small_report = ingest(small, workdir / "ws_small")
        assert small_report["rows"]["requests"] == args.compare_requests, small_report
        small_size = small.stat().st_size
        big = workdir / "vllm_million.json"
        started = time.perf_counter()
        summary = write_vllm_result(big, args.requests, seed=0)
        generate_wall = time.perf_counter() - started
        big_wall, big_cpu, big_peak, report = ingest(big, workdir / "ws_big")
        size = big.stat().st_size
        store_bytes = sum(p.stat().st_size for p in (workdir / "ws_big").rglob("*.parquet"))
        itl_count = summary["total_output_tokens"] - summary["completed"]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = report["rows"]
    lines = [
        f"machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"{_memory_gib():.0f} GiB RAM), Python {platform.python_version()}",
        f"command: python benchmarks/ingest_million.py --requests {args.requests}",
        "",
        "| measurement | value |",
        "| --- | --- |",
        f"| requests in the vLLM result | {args.requests:,} |",
        f"| inter-token latencies in it | {itl_count:,} |",
        f"| result file size | {size / GIB:.2f} GiB |",
        f"| generating it (not part of the ingest) | {generate_wall:.0f} s |",
        f"| rows ingested | {rows.get('requests', 0):,} requests + {rows.get('runs', 0)} run |",
        f"| `servetune ingest` wall time | {big_wall:.1f} s (CPU {big_cpu:.1f} s) |",
        f"| `servetune ingest` peak RSS | {big_peak / GIB:.2f} GiB |",
        f"| store size (Parquet, zstd) | {store_bytes / GIB:.2f} GiB |",
        f"| throughput | {args.requests / big_wall:,.0f} requests/s, "
        f"{size / big_wall / (1 << 20):.0f} MiB/s of JSON |",
        "",
        f"Side by side on a {args.compare_requests:,}-request result "
        f"({small_size / GIB:.2f} GiB):",
        "",
        "| approach | wall time | CPU time | peak RSS |",
        "| --- | --- | --- | --- |",
        f"| `json.load` only (no conversion, nothing written) | {naive_wall:.1f} s | "
        f"{naive_cpu:.1f} s | {naive_peak / GIB:.2f} GiB |",
        f"| `servetune ingest` (validate, convert, write Parquet) | {small_wall:.1f} s | "
        f"{small_cpu:.1f} s | {small_peak / GIB:.2f} GiB |",
        f"| ratio servetune / json.load | {small_wall / naive_wall:.2f}x | "
        f"{small_cpu / naive_cpu:.2f}x | {small_peak / naive_peak:.2f}x |",
    ]
    print("\n".join(lines))
    from servetune.data._benchmark_record import write_record

    write_record("ingest_million", {
        "requests": args.requests, "itl_count": itl_count, "result_bytes": size,
        "generate_s": generate_wall, "rows": rows, "ingest_wall_s": big_wall,
        "ingest_cpu_s": big_cpu, "ingest_peak_rss_bytes": big_peak, "store_bytes": store_bytes,
        "compare": {"requests": args.compare_requests, "result_bytes": small_size,
                    "json_load": {"wall_s": naive_wall, "cpu_s": naive_cpu,
                                  "peak_rss_bytes": naive_peak},
                    "ingest": {"wall_s": small_wall, "cpu_s": small_cpu,
                               "peak_rss_bytes": small_peak}}}, args=args)
    if big_peak >= 2 * GIB:
        raise SystemExit("FAILED: peak RSS of the ingest is 2 GiB or more")


def _memory_gib() -> float:
    with open("/proc/meminfo") as handle:
        kib = int(handle.readline().split()[1])
    return kib / (1 << 20)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()

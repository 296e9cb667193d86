"""Is the main job's default workload servable by the engine default? The engine default
(transformers-cb, nothing set) simulated with the workspace champion at the default workload's
rate and above, with the default objective's SLOs.

    python benchmarks/default_load.py --workspace WS [--rates 1.5 2 4]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

from servetune.data._benchmark_record import write_record
from servetune.tuner._job import DEFAULT_WORKLOAD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--rates", type=float, nargs="+", default=[1.5, 2.0, 4.0])
    args = parser.parse_args()
    rows = []
    for rate in args.rates:
        workload = re.sub(r"rate=[0-9.]+", f"rate={rate:g}", DEFAULT_WORKLOAD)
        out = subprocess.run(
            [sys.executable, "-m", "servetune.cli._main", "--workspace", args.workspace,
             "simulate", "--engine", "transformers-cb", "--workload", workload,
             "--slo-ttft-ms", "5000", "--slo-tpot-ms", "150", "--json"],
            capture_output=True, text=True, check=True)
        m = json.loads(out.stdout)["metrics"]
        rows.append({"rate": rate, "ttft_p90_s": round(m["ttft_ms"]["p90"] / 1e3, 2),
                     "tpot_p90_ms": round(m["tpot_ms"]["p90"], 1),
                     "goodput_rps": round(m["goodput_rps"], 3),
                     "request_throughput_rps": round(m["request_throughput_rps"], 3)})
        print(json.dumps(rows[-1]), flush=True)
    write_record("default_load", {"workload": DEFAULT_WORKLOAD, "rows": rows}, args=args)


if __name__ == "__main__":
    main()

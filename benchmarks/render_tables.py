"""Regenerate BENCHMARKS.md's tables from the benchmark records in ``benchmarks/results/``.

Every ``<!-- table:NAME -->`` ... ``<!-- /table:NAME -->`` pair in BENCHMARKS.md is replaced by
the Markdown table that ``TABLES[NAME]`` builds from the records. A spec is data: where the rows
are in a record (a ``/`` path whose ``*`` steps iterate a list or a dict), which keys to keep and
what to add per key, and per column a header, a ``str.format`` template over the row (``{_key}``
is the row's key, ``{_up[...]}`` what the ``*`` before the last one reached; a list value is formatted element by
element and joined with `` / ``; the conversion ``!p`` multiplies by 100), and an alignment.

    python benchmarks/render_tables.py            # rewrite BENCHMARKS.md
    python benchmarks/render_tables.py --check    # exit 1 if BENCHMARKS.md is out of date
"""

from __future__ import annotations

import argparse
import re
import string
import sys
from pathlib import Path

from servetune.data._atomic import atomic_write_text
from servetune.data._benchmark_record import RESULTS_DIR, read_record

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = ROOT / "BENCHMARKS.md"
_MARKER = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)",
                     re.S)

_RECON = ("runs", "{runs}", "r")
TABLES: dict[str, dict] = {
    "sim_startup": {
        "sources": [
            {"record": "sim_startup", "rows": "rows/*",
             "first": {"tree": "after (0f73c8d)"}, "rest": {"tree": "after"}},
            {"record": "sim_startup_earlier", "rows": "rows/*",
             "first": {"tree": "after, earlier run (038dfed)"}, "rest": {"tree": ""}},
            {"record": "sim_startup_before", "rows": "rows/*",
             "first": {"tree": "before (b383d11)"}, "rest": {"tree": "before"}}],
        "columns": [("tree", "{tree}"), ("load", "{load_1min_before:.2f}", "r"),
                    ("first process", "{first_s:.1f} s", "r"),
                    ("second process", "{second_s:.2f} s", "r"),
                    ("second, CPU", "{second_cpu_s:.2f} s", "r")]},
    "cache_tokens_model": {
        "sources": [{"record": "cache_tokens_model", "rows": "held_out/*",
                     "keys": {"step_v5": {"set": "step_v5 (default)"},
                              "step_v6": {"set": "step_v6 (+ mask copy)"}}}],
        "columns": [("feature set", "{set}"),
                    ("search CV MAPE (training runs)", "{cv_mape_search:.2f}", "r"),
                    ("held-out MAPE", "{held_out[mape]:.2f}", "r"),
                    ("p50", "{held_out[p50_ape]:.2f}", "r"),
                    ("p90", "{held_out[p90_ape]:.2f}", "r"),
                    ("R²", "{held_out[r2]:.3f}", "r")]},
    "http_reconstruction": {
        "sources": [{"record": "http_reconstruction", "rows": "hosts/*/rows/*"}],
        "columns": [("host", "{_up[host]}"), ("steps", "{_key}"),
                    ("count", "{steps} ({vs_served[steps]:.3f})", "r"),
                    ("median step ms", "{median_ms:.1f} ({vs_served[median_duration]:.3f})", "r"),
                    ("busy time", "{busy_s:.2f} s ({vs_served[total_time]:.3f})", "r"),
                    ("mean decoding sequences",
                     "{decode_seqs_mean:.1f} ({vs_served[decode_seqs_mean]:.3f})", "r"),
                    ("prefill tokens", "{prefill_tokens:,}", "r")]},
    "gpu_loop": {
        "sources": [{"record": "gpu_loop", "rows": "workloads/*/rounds/*/candidates/*"}],
        "columns": [("workload", "{workload}"), ("round", "{round}", "r"), ("candidate", "{_key}"),
                    ("goodput req/s pred. / meas.",
                     "{goodput_rps[predicted]:.2f} / {goodput_rps[measured]:.2f}", "r"),
                    ("mean TTFT ms pred. / meas. (error)",
                     "{ttft_mean_ms[predicted]:.0f} / {ttft_mean_ms[measured]:.0f} "
                     "({ttft_mean_ms[error]:+.0%})", "r"),
                    ("mean TPOT ms pred. / meas. (error)",
                     "{tpot_mean_ms[predicted]:.1f} / {tpot_mean_ms[measured]:.1f} "
                     "({tpot_mean_ms[error]:+.0%})", "r"),
                    ("output tok/s pred. / meas. (error)",
                     "{output_throughput_tok_s[predicted]:.0f} / "
                     "{output_throughput_tok_s[measured]:.0f} "
                     "({output_throughput_tok_s[error]:+.0%})", "r")]},
    "payoff": {
        "sources": [{"record": "payoff", "rows": "workloads/*/configs/*"}],
        "columns": [("workload", "{_up[workload]}"), ("config", "{_key}"),
                    ("goodput req/s (3 runs)", "{measured_objective[values]:.3f}"),
                    ("predicted", "{predicted_objective:.3f}", "r"),
                    ("mean TTFT ms", "{measured_ttft_mean_ms[values]:.0f}"),
                    ("pred.", "{predicted[ttft_mean_ms]:.0f}", "r"),
                    ("mean TPOT ms", "{measured_tpot_mean_ms[values]:.1f}"),
                    ("pred.", "{predicted[tpot_mean_ms]:.1f}", "r"),
                    ("tok/s", "{measured_output_throughput_tok_s[values]:.0f}"),
                    ("pred.", "{predicted[output_throughput_tok_s]:.0f}", "r")]},
    "step_reconstruction": {
        "sources": [{"record": "step_reconstruction", "rows": "summary/*",
                     "keys": {"graphs+sync": {"label": "graphs + sync"},
                              "eager+sync": {"label": "eager + sync"},
                              "graphs+async": {"label": "graphs + async"},
                              "eager+async": {"label": "eager + async"},
                              "scheduler=fifo": {"label": "fifo"},
                              "scheduler=prefill_first": {"label": "prefill_first"}}}],
        "columns": [("runs", "{label}"), ("n", "{runs}", "r"),
                    ("step count ratio (min–max)", "{count_ratio_min:.3f}–{count_ratio_max:.3f}"),
                    ("median duration error (median / worst run)",
                     "{duration_error_p50_median!p:.2f} % / {duration_error_p50_max!p:.2f} %"),
                    ("p90 duration error (median run)", "{duration_error_p90_median!p:.2f} %", "r"),
                    ("decode batch size exact (median / worst run)",
                     "{decode_exact_share_median!p:.3g} % / {decode_exact_share_min!p:.3g} %")]},
    "host_calibration": {
        "sources": [{"record": "host_calibration", "rows": "models/*",
                     "keys": {"champion (H200 sample)": {
                                  "model": "champion", "on": "the H200 sample (88 runs)"},
                              "calibrated on another H100": {
                                  "model": "calibrated", "on": "12 runs of another H100 host "
                                  "(`space_fill_h100`, GPU-739e06e3)"},
                              "calibrated on this H100 (other workload)": {
                                  "model": "calibrated",
                                  "on": "the 6 `splitwise150` runs of the same H100"}}}],
        "columns": [("model", "{model}"), ("trained on", "{on}"),
                    ("step MAPE", "{step_mape_pct:.1f} %", "r"),
                    ("recB TTFT / TPOT / tok/s error",
                     "{error_pct[ttft_mean_ms][recB/long3k]:+.1f} / "
                     "{error_pct[tpot_mean_ms][recB/long3k]:+.1f} / "
                     "{error_pct[output_throughput_tok_s][recB/long3k]:+.1f} %"),
                    ("default TTFT / TPOT / tok/s error",
                     "{error_pct[ttft_mean_ms][default/long3k]:+.1f} / "
                     "{error_pct[tpot_mean_ms][default/long3k]:+.1f} / "
                     "{error_pct[output_throughput_tok_s][default/long3k]:+.1f} %")]},
}


class _Cells(string.Formatter):
    """``str.format`` with ``!p`` (x100) and lists formatted per element, joined by `` / ``."""

    def convert_field(self, value, conversion):
        if conversion == "p":
            return [v * 100 for v in value] if isinstance(value, list) else value * 100
        return super().convert_field(value, conversion)

    def format_field(self, value, format_spec):
        if isinstance(value, list):
            return " / ".join(format(v, format_spec) for v in value)
        return format(value, format_spec)


def _walk(node, steps: list[str], starred: tuple = (), key=None):
    """Yield ``(row, objects the earlier * steps reached, key)`` for every object the path
    ``steps`` reaches."""
    if not steps:
        yield node, starred, key
        return
    step, rest = steps[0], steps[1:]
    if step == "*":
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, child in items:
            yield from _walk(child, rest, (*starred, child), k)
    else:
        yield from _walk(node[int(step)] if isinstance(node, list) else node[step], rest,
                         starred, key)


def rows_of(spec: dict, results_dir: Path) -> list[dict]:
    """The rows of a table spec, each a dict the column templates format."""
    rows = []
    for source in spec["sources"]:
        figures = read_record(source["record"], results_dir)["figures"]
        found = [(r, starred[-2] if len(starred) > 1 else None, k)
                 for r, starred, k in _walk(figures, source["rows"].split("/"))
                 if isinstance(r, dict)]
        if "keys" in source:
            by_key = {k: (r, up) for r, up, k in found}
            found = [(by_key[k][0], by_key[k][1], k) for k in source["keys"] if k in by_key]
        for i, (row, up, key) in enumerate(found):
            extra = source.get("keys", {}).get(key, {})
            extra = {**extra, **source.get("first" if i == 0 else "rest", {})}
            rows.append({**row, **extra, "_key": key, "_up": up})
    return rows


def render(name: str, results_dir: Path = RESULTS_DIR) -> str:
    """The Markdown table ``name`` (a key of :data:`TABLES`) from the records."""
    spec = TABLES[name]
    columns = [(c[0], c[1], c[2] if len(c) > 2 else "l") for c in spec["columns"]]
    cells = _Cells()
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for _, _, a in columns) + " |"]
    for row in rows_of(spec, results_dir):
        texts = [cells.vformat(t, (), row) for _, t, _ in columns]
        lines.append("|" + "|".join(f" {c} " if c else " " for c in texts) + "|")
    return "\n".join(lines) + "\n"


def update(text: str, results_dir: Path = RESULTS_DIR) -> str:
    """``text`` with every marked table regenerated; unknown names are an error."""
    def one(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise SystemExit(f"BENCHMARKS.md names table {name!r}, which render_tables.py does "
                             f"not define; known: {', '.join(sorted(TABLES))}")
        return match.group(1) + render(name, results_dir) + match.group(4)
    return _MARKER.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a table differs from its records")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    text = args.markdown.read_text(encoding="utf-8")
    new = update(text, args.results)
    stale = sorted({m.group("name") for m in _MARKER.finditer(text)}
                   - {m.group("name") for m in _MARKER.finditer(text)
                      if m.group(0) in new})
    if args.check:
        if new != text:
            print(f"{args.markdown}: tables out of date with their records: {', '.join(stale)}; "
                  "run python benchmarks/render_tables.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        atomic_write_text(args.markdown, new)
        print(f"updated {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

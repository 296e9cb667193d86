"""A ``vllm bench sweep serve`` experiment directory into runs (and requests).

Layout, from ``vllm/benchmarks/sweep/serve.py`` at v0.34.0 (commit 62d4bc3c7):
``<output-dir>/<experiment-name>/`` holds ``summary.csv`` (written last, ``:384``) and one
directory per serve x bench parameter combination, named ``SERVE--<serve name>-BENCH--<bench
name>`` (``_get_comb_base_path``, ``:139``; a name is the item's ``_benchmark_name`` or its
``k=v`` pairs joined by ``-``). Each holds ``run=N.json`` per repetition (``--num-runs``, default 3;
``:157``): a ``vllm bench serve --save-result`` JSON with ``run_number`` and the serve and bench
overrides merged in at the top level (``_update_run_data``, ``:54``), plus ``summary.json`` (the
list of those), an unmeasured ``warmup.json`` and ``*.failure.json`` files, all skipped here.

Ingest the experiment through its ``summary.csv`` (``servetune ingest EXP/summary.csv``): every
``run=N.json`` becomes one run, read by the ``vllm-bench`` adapter (requests too, with
``--save-detailed``); so a combination gives one run per repetition. Its ``config`` is the
combination's serve parameters -- the ``k=v`` pairs of the ``SERVE--`` part of the directory
name and the top-level keys of the result that are vLLM knobs (any spelling, ``-`` or ``_``),
typed as the result file has them -- flattened into the knob columns by the engine spec. The
combination, repetition and bench parameters go to ``extra.sweep``. ``run_id`` is
``vllm-sweep-<12 hex of summary.csv's SHA-256>-<combination>-r<N>``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from pathlib import Path

from servetune import ConfigError, InputError
from servetune.data._schemas import conform
from servetune.data._store import TableStream
from servetune.data.adapters._base import Adapter, file_sha256
from servetune.data.adapters._common import check_overrides, json_text, loads
from servetune.data.adapters._vllm import VllmBenchAdapter
from servetune.data.engines import VLLM

__all__ = ["VllmSweepAdapter"]

_RUN_FILE = re.compile(r"^run=(\d+)\.json$")
_COMBINATION = ("SERVE-", "BENCH-")


class VllmSweepAdapter(Adapter):
    """``vllm bench sweep serve`` output (entered through ``summary.csv``) into runs.

    Args:
        overrides: identity values set on every run (``hardware``, ``engine_version``, ...).

    Example:
        >>> VllmSweepAdapter().name
        'vllm-sweep'
    """

    name = "vllm-sweep"
    description = ("vllm bench sweep serve experiment: its summary.csv; one run per run=N.json "
                   "with the serve parameters as config")

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        self.overrides = dict(overrides or {})

    def sniff(self, path: Path, head: bytes) -> bool:
        return path.name == "summary.csv" and bool(_combinations(path.parent))

    def read(self, path: Path, *, sha256: str) -> dict:
        overrides = check_overrides(self.overrides)
        combos = _combinations(path.parent)
        if not combos:
            raise InputError("found no SERVE--.../BENCH--... combination directories with "
                             "run=N.json results next to this summary.csv; expected the "
                             "experiment directory of `vllm bench sweep serve`", path=str(path))
        runs, streams, counts = [], [], []
        base = overrides.pop("run_id", f"vllm-sweep-{sha256[:12]}")
        for k, (directory, files) in enumerate(combos):
            for number, run_file in files:
                run_id = f"{base}-{k}-r{number}"
                batch = VllmBenchAdapter({**overrides, "run_id": run_id}).read(
                    run_file, sha256=file_sha256(run_file))
                if batch["runs"].num_rows != 1:
                    raise InputError("expected one result object per run=N.json, found "
                                     f"{batch['runs'].num_rows}", path=str(run_file))
                row = batch["runs"].to_pylist()[0]
                runs.append(_with_sweep(row, run_file, directory, number, k))
                if "requests" in batch:
                    streams.append(batch["requests"].chunks)
                    counts.append(batch["requests"].num_rows or 0)
        names = list(runs[0])
        out: dict = {"runs": conform({n: [r[n] for r in runs] for n in names}, "runs",
                                     path=str(path))}
        if streams:
            out["requests"] = TableStream(itertools.chain.from_iterable(streams),
                                          num_rows=sum(counts))
        return out


def _combinations(root: Path) -> list[tuple[Path, list[tuple[int, Path]]]]:
    """The combination directories under ``root`` (sorted) with their ``run=N.json`` files."""
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(
            _COMBINATION))
    except OSError:
        return []
    out = []
    for directory in children:
        files = sorted((int(m[1]), p) for p in directory.iterdir()
                       if (m := _RUN_FILE.match(p.name)) and p.is_file())
        if files:
            out.append((directory, files))
    return out


def _with_sweep(row: dict, run_file: Path, directory: Path, number: int, index: int) -> dict:
    """The vllm-bench runs row with the serve parameters as config and the sweep in extra."""
    try:
        result = loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):  # the vllm-bench adapter has read it
        result = {}
    named = _serve_names(directory.name)
    serve = {}
    for key, value in result.items():
        knob = key.replace("-", "_")
        if knob in VLLM.spellings or key in named or knob in named:
            serve[knob] = value
    for key, text in named.items():
        serve.setdefault(key, _typed(text))
    try:
        serve = VLLM.canonical(serve, strict=False)
    except ConfigError as exc:
        raise InputError(str(exc), path=str(run_file)) from None
    setup = json.loads(row["config"] or "{}")
    bench = {k: v for k, v in setup.items()
             if k.replace("-", "_") not in serve and k != "run_number"}
    row.update({k: v for k, v in VLLM.runs_columns(serve).items()})
    row["config"] = json_text(serve)
    extra = json.loads(row["extra"] or "{}")
    extra["sweep"] = {"combination": directory.name, "combination_index": index,
                      "run_number": number, "bench": bench}
    row["extra"] = json_text(extra)
    row["source_file"] = str(run_file)
    return row


def _serve_names(name: str) -> dict[str, str]:
    """``k=v`` pairs of the ``SERVE--`` part of a combination directory name (keys with ``_``)."""
    if not name.startswith("SERVE--"):
        return {}
    part = name[len("SERVE--"):].split("-BENCH--", 1)[0]
    if "=" not in part:
        return {}  # a _benchmark_name, not k=v pairs
    pairs: list[str] = []
    for token in part.split("-"):
        if "=" in token or not pairs:
            pairs.append(token)
        else:
            pairs[-1] += "-" + token  # a value with a dash in it
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if sep:
            out[key.replace("-", "_")] = value
    return out


def _typed(text: str):
    try:
        value = json.loads(text.lower() if text in ("True", "False") else text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool)) else text

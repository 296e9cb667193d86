"""Benchmark records: one JSON file per benchmark with the commit, machine, GPU, args and figures.

Every script in ``benchmarks/`` ends with :func:`write_record`; ``BENCHMARKS.md`` builds its
tables from these files (``benchmarks/render_tables.py``), so a figure is measured once and
printed from its record.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = write_record("demo", {"wall_s": 1.5}, args={"n": 3}, results_dir=folder)
    >>> read_record("demo", results_dir=folder)["figures"]
    {'wall_s': 1.5}
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from servetune import InputError
from servetune.data._atomic import atomic_write_text
from servetune.data.collect._provenance import cpu_model

__all__ = ["RESULTS_DIR", "gpu_info", "git_commit", "machine_info", "measured_gpus",
           "read_record", "record_path", "write_record"]

#: ``benchmarks/results/`` of the checkout the package is imported from
RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GPU_FIELDS = ("name", "uuid", "memory_total", "driver_version")


def record_path(name: str, results_dir: str | os.PathLike | None = None) -> Path:
    """Where the record ``name`` lives: ``<results_dir>/<name>.json``."""
    if not _NAME.match(name) or name.endswith(".json"):
        raise InputError(f"benchmark record name {name!r} must be letters, digits, '_', '-' or "
                         "'.' (no path, no .json suffix)")
    return Path(results_dir if results_dir is not None else RESULTS_DIR) / f"{name}.json"


def write_record(name: str, figures: Mapping, *,
                 args: Mapping | argparse.Namespace | None = None, notes: str = "",
                 measured_on: object = None,
                 results_dir: str | os.PathLike | None = None) -> Path:
    """Write ``<results_dir>/<name>.json`` atomically and return its path.

    Args:
        name: the benchmark's name (its script's stem, or stem plus a variant).
        figures: what the benchmark measured (JSON-serialisable; numpy scalars and paths are
            turned into numbers and strings).
        args: the script's arguments (an ``argparse.Namespace`` or a mapping).
        notes: one line of context for a reader.
        measured_on: for a benchmark that analyses traces measured elsewhere, where they were
            measured (e.g. the GPU names in the traces' provenance).
        results_dir: the folder (default :data:`RESULTS_DIR`); the commit is read from the git
            checkout that holds it.
    """
    path = record_path(name, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    record = {"name": name, "commit": git_commit(path.parent),
              "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "gpu": gpu_info(), "measured_on": measured_on,
              "args": dict(args) if args is not None else None, "notes": notes,
              "figures": dict(figures)}
    atomic_write_text(path, json.dumps(record, indent=1, default=_plain, allow_nan=True) + "\n")
    return path


def read_record(name: str, results_dir: str | os.PathLike | None = None) -> dict:
    """The record ``name`` as written by :func:`write_record`."""
    path = record_path(name, results_dir)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no benchmark record {path}; run benchmarks/{name}.py (or the script "
                         "that writes it) first") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


def git_commit(directory: str | os.PathLike) -> dict | None:
    """``{"sha", "dirty"}`` of the git checkout holding ``directory`` (dirty: tracked files
    changed), or None outside a checkout or without git."""
    exe = shutil.which("git")
    if exe is None:
        return None
    try:
        sha = subprocess.run([exe, "-C", str(directory), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=30)
        if sha.returncode != 0:
            return None
        status = subprocess.run([exe, "-C", str(directory), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def machine_info() -> dict:
    """Hostname, CPU model and count, memory, Python and platform of this machine."""
    return {"hostname": socket.gethostname(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "memory_gib": _memory_gib(),
            "python": platform.python_version(), "platform": platform.platform()}


def gpu_info() -> list[dict] | None:
    """One entry per GPU from ``nvidia-smi`` (name, uuid, memory_total, driver_version), or None
    when ``nvidia-smi`` is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,uuid,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = [dict(zip(_GPU_FIELDS, (v.strip() for v in line.split(","))))
            for line in out.splitlines() if line.count(",") == len(_GPU_FIELDS) - 1]
    return gpus or None


def measured_gpus(*runs_tables: str | os.PathLike) -> list[str]:
    """The GPU names of the runs in these ``runs`` Parquet files (or folders holding a
    ``runs.parquet``): a record's ``measured_on`` for traces measured elsewhere."""
    import pyarrow.parquet as pq

    names: set[str] = set()
    for table in runs_tables:
        path = Path(table)
        path = path / "runs.parquet" if path.is_dir() else path
        names.update(n for n in pq.read_table(path, columns=["gpu_name"]).column(0).to_pylist()
                     if n)
    return sorted(names)


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError, AttributeError):
        return None


def _plain(value: object) -> object:
    """JSON fallback: numpy scalars/arrays, paths, sets and anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)

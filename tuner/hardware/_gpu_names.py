"""The GPU a measurement ran on, read from its nodes with ``nvidia-smi``.

A verification run is stored with a ``hardware`` value; models are named and trained per
hardware, so a run stored as ``unknown`` mixes with every other host's data. When the user gives
no hardware name, the dispatcher asks each node of a group once: ``nvidia-smi
--query-gpu=index,name --format=csv,noheader`` through the node's own transport (SSH or local),
keeps the names of the node's assigned GPUs (all when none are assigned), and labels the group
with the distinct names joined by ``+``. A node without ``nvidia-smi`` (a CPU host) gives nothing,
and the label stays ``unknown``.

Example:
    >>> parse_gpu_names("0, NVIDIA H200\\n1, NVIDIA H200\\n")
    {0: 'NVIDIA H200', 1: 'NVIDIA H200'}
    >>> hardware_label([{0: 'NVIDIA H200', 1: 'NVIDIA H100 80GB HBM3'}], [(1,)])
    'NVIDIA H100 80GB HBM3'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from servetune.tuner.hardware._errors import CommandFailed, CommandTimeout

__all__ = ["GPU_QUERY", "UNKNOWN_HARDWARE", "parse_gpu_names", "hardware_label",
           "query_gpu_names"]

log = logging.getLogger(__name__)

GPU_QUERY = ("nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader")
UNKNOWN_HARDWARE = "unknown"


def parse_gpu_names(stdout: str) -> dict[int, str]:
    """``index -> name`` from ``nvidia-smi --query-gpu=index,name --format=csv,noheader``;
    lines of another shape are skipped."""
    names = {}
    for line in stdout.splitlines():
        index, sep, name = line.partition(",")
        if sep and index.strip().isdigit() and name.strip():
            names[int(index)] = name.strip()
    return names


def hardware_label(per_node: Sequence[dict[int, str]], gpus: Sequence[Sequence[int]]) -> str:
    """The distinct names of the assigned GPUs over the nodes (first seen first), joined by
    ``+``; :data:`UNKNOWN_HARDWARE` when no node reported one."""
    seen: list[str] = []
    for names, assigned in zip(per_node, gpus):
        for index in (assigned or sorted(names)):
            name = names.get(index)
            if name is not None and name not in seen:
                seen.append(name)
    return "+".join(seen) or UNKNOWN_HARDWARE


def query_gpu_names(transport, *, timeout_s: float = 30.0) -> dict[int, str]:
    """The node's GPUs (``{}`` when it has no ``nvidia-smi`` or it fails)."""
    try:
        result = transport.run(GPU_QUERY, timeout_s=timeout_s, check=False)
    except (CommandFailed, CommandTimeout) as exc:
        log.info("%s: no GPU names (%s)", transport.node.label, exc)
        return {}
    if result.exit_status != 0:
        log.info("%s: nvidia-smi exited with %d", transport.node.label, result.exit_status)
        return {}
    return parse_gpu_names(result.stdout)

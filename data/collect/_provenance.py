"""Machine fingerprint for a trace's provenance: GPU name and UUID, driver, CPU model, versions."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["machine_fingerprint", "cpu_model"]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi(index: int) -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    fields = ("name", "uuid", "driver_version", "memory.total", "pci.bus_id", "clocks.max.sm")
    try:
        out = subprocess.run([exe, f"--id={index}", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.split(",")]
    return dict(zip(("gpu_name", "gpu_uuid", "driver", "gpu_memory", "pci_bus_id", "sm_clock_max"),
                    values)) if len(values) == len(fields) else {}


def machine_fingerprint(device: str) -> dict:
    """What identifies the machine and software a trace was measured on (JSON-serialisable)."""
    import torch
    import transformers

    import servetune

    info: dict = {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "servetune": servetune.__version__,
        "device": device,
    }
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        index = torch_device.index if torch_device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update({"gpu_name": props.name, "gpu_uuid": str(getattr(props, "uuid", "")),
                     "gpu_sm_count": props.multi_processor_count,
                     "gpu_memory_bytes": int(props.total_memory),
                     "gpu_capability": f"{props.major}.{props.minor}"})
        smi = _nvidia_smi(index)
        info.update({k: v for k, v in smi.items() if k != "gpu_name"})
        if smi.get("gpu_uuid"):
            info["gpu_uuid"] = smi["gpu_uuid"]
    return info

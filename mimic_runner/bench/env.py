"""What a benchmark figure needs next to it: device, versions, date, command, load."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from typing import Any

import torch

from mimic_runner.bench.timing import load_average


def device_name(device: torch.device | str) -> str:
    """A human name for ``device`` (the GPU's marketing name, or the CPU model)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo where available, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_devices() -> list[str]:
    """``cpu`` plus ``cuda`` when a CUDA device is present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def environment(argv: list[str] | None = None) -> dict[str, Any]:
    """The metadata written with every result file."""
    argv = sys.argv if argv is None else argv
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(argv[0]), *argv[1:]]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "malloc": os.environ.get("LD_PRELOAD", "") or "default",
    }
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except ImportError:  # pragma: no cover
        pass
    return info

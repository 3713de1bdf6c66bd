"""Helpers shared by the CLI tests (imported as a plain module, like ``fixtures_prepare``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# A small synthetic dataset: enough for every split to hold both classes, fast on 2 cores.
TINY = ["data.synth.params.n=240"]


def run_cli(args: list[str], cwd: Path, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a console script (``mimic-run`` ...) of this environment in ``cwd``."""
    exe = Path(sys.executable).parent / args[0]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([str(exe), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)

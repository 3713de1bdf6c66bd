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


def dataset_arrays(n: int = 12, size: int = 8, fixated: float = 0.1) -> dict:
    """Keyword arguments of ``write_dataset`` for a tiny valid 3-class set; ``fixated`` is the
    share of pixels with a fixation."""
    import numpy as np

    rng = np.random.default_rng(0)
    return dict(
        images=rng.integers(0, 255, (n, 1, size, size), dtype=np.uint8),
        labels=np.arange(n) % 3,
        split=np.arange(n) % 3,
        ids=[f"img{i:03d}" for i in range(n)],
        class_names=["Normal", "CHF", "pneumonia"],
        gaze=rng.random((n, size, size)).astype(np.float32),
        fixations=rng.random((n, size, size)) > 1 - fixated,
        confounder=np.zeros((n, size, size), bool),
    )


def feedback_cli(capsys, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    """``mimic-feedback ARGS`` in this process: (exit code, stdout, stderr)."""
    from mimic_runner.cli.feedback import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def module_for_loss(compose, *overrides: str):  # type: ignore[no-untyped-def]
    """A module built from ``compose(*overrides)`` for a 1-channel, 3-class dataset with gaze
    and fixations, seeded, with a stand-in trainer at epoch 0 of 10 (for calling its losses)."""
    from types import SimpleNamespace

    import torch

    from mimic_runner.training.builders import DataShape, build_module

    torch.manual_seed(0)
    shape = DataShape(in_channels=1, num_classes=3, maps=("gaze", "fixations"))
    module = build_module(compose(*overrides), shape)
    module._trainer = SimpleNamespace(max_epochs=10, current_epoch=0)
    return module

"""Run folders to give feedback on, for tests and the scripted study: a real `mimic-run`, or an
untrained one (fast fixtures). Imported as a plain module, like `cli_helpers`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mimic_runner.errors import UserError
from mimic_runner.io import atomic_path


def train_run(root: str | Path, overrides: list[str], timeout: float = 1800) -> Path:
    """Train with ``mimic-run`` (a subprocess, as a user would) in ``root``; return the run dir.

    A finished run (its ``metrics.json`` exists) is reused, not retrained.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    found = _finished_runs(root)
    if len(found) == 1:
        return found[0]
    cmd = [sys.executable, "-m", "mimic_runner.cli.run", *overrides, "skip_completed=true",
           "callbacks.progress_bar=null"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    found = _finished_runs(root)
    if proc.returncode != 0 or len(found) != 1:
        raise RuntimeError(f"mimic-run {' '.join(overrides)} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return found[0]


def _finished_runs(root: Path) -> list[Path]:
    from mimic_runner.rundir import RunDir

    return sorted(d for d in (root / "runs").glob("*") if RunDir(d).metrics.exists())


def untrained_run(run_dir: str | Path, overrides: list[str], seed: int = 0,
                  calibrate_batches: int = 4) -> Path:
    """A run folder holding the composed config and a freshly initialised model's checkpoint.

    What :func:`~mimic_runner.analysis.load.load_run` needs (``.hydra/config.yaml``,
    ``checkpoints/last.ckpt``) without training: fast fixtures for the feedback API and tests.
    The BatchNorm statistics are calibrated on ``calibrate_batches`` training batches, so that
    the model in eval mode behaves as it does in training (at initialisation the running
    statistics are 0/1 and the attention map would be a flat 0.5).
    """
    from mimic_runner.config import compose
    from mimic_runner.rundir import RunDir
    from mimic_runner.training.builders import build_datamodule, build_module

    rd = RunDir(run_dir)
    if rd.last_checkpoint.exists():
        return rd.path
    cfg = compose([*overrides, f"seed={seed}"])
    if cfg.model.name != "attention_branch":
        raise UserError("untrained_run is for model=attention_branch")
    torch.manual_seed(seed)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    module = build_module(cfg, dm)
    calibrate_batchnorm(module, dm, calibrate_batches)
    rd.config.parent.mkdir(parents=True, exist_ok=True)
    rd.checkpoints.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, rd.config)
    with atomic_path(rd.last_checkpoint) as tmp:
        torch.save({"state_dict": module.state_dict(),
                    "hyper_parameters": dict(module.hparams)}, tmp)
    return rd.path


@torch.no_grad()
def calibrate_batchnorm(module: torch.nn.Module, dm, batches: int) -> None:  # type: ignore[no-untyped-def]
    """Set every BatchNorm's running statistics to their average over some training batches."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    dm.setup()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    module.train()
    for i, batch in enumerate(dm.loader("train")):
        if i == batches:
            break
        module(dm.normalise(batch["image"]))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    module.eval()

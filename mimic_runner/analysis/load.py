"""Reload a finished run: its config, its DataModule and its trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mimic_runner.config import load_run_config
from mimic_runner.data.datamodule import HDF5DataModule
from mimic_runner.errors import UserError
from mimic_runner.rundir import RunDir
from mimic_runner.training.builders import build_datamodule, build_module
from mimic_runner.training.checkpoint import (
    is_self_describing,
    module_from_checkpoint,
    read_checkpoint,
)
from mimic_runner.training.modules import ExplainedClassifier


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: DictConfig
    module: ExplainedClassifier
    datamodule: HDF5DataModule
    checkpoint: Path
    metrics: dict[str, Any] | None


def run_config(run_dir: str | Path) -> DictConfig:
    """A run folder's composed config; one line when the folder is not a run."""
    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise UserError(f"{rd.path}: no such run directory")
    if not rd.config.exists():
        raise UserError(f"{rd.path}: not a run directory (no .hydra/config.yaml)")
    return load_run_config(rd.config)


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu",
             ) -> LoadedRun:
    """A run's DataModule (set up) and its trained LightningModule (eval mode, on ``device``).

    ``checkpoint``: ``best`` (recorded in metrics.json), ``last`` or a checkpoint path; the
    module is rebuilt from the checkpoint itself
    (:func:`~mimic_runner.training.checkpoint.load_checkpoint`).
    """
    rd = RunDir(run_dir)
    cfg = run_config(rd.path)
    ckpt = rd.checkpoint(checkpoint)
    state = read_checkpoint(ckpt)
    dm = build_datamodule(cfg)
    dm.setup()
    if is_self_describing(state):
        module = module_from_checkpoint(state, ckpt)
    else:  # written before checkpoints described themselves: the run's config says it all
        module = build_module(cfg, dm)
        module.load_state_dict(state["state_dict"])
    module.eval().to(device)
    return LoadedRun(run_dir=rd.path, cfg=cfg, module=module, datamodule=dm, checkpoint=ckpt,
                     metrics=rd.read_metrics())

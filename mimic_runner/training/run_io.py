"""Reload a finished run (config, data, trained model) from its run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mimic_runner.data.datamodule import HDF5DataModule
from mimic_runner.errors import UserError
from mimic_runner.io import read_json
from mimic_runner.training.builders import build_datamodule, build_module
from mimic_runner.training.modules import ExplainedClassifier


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: DictConfig
    module: ExplainedClassifier
    datamodule: HDF5DataModule
    checkpoint: Path
    metrics: dict[str, Any] | None


def run_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """The checkpoint of a run: ``best`` (from metrics.json), ``last``, or a path."""
    if which not in ("best", "last"):
        p = Path(which)
        if not p.exists():
            raise UserError(f"{p}: no such checkpoint file")
        return p
    metrics_path = run_dir / "metrics.json"
    if which == "best" and metrics_path.exists():
        best = read_json(metrics_path).get("best_checkpoint")
        if best and (run_dir / best).exists():
            return run_dir / best
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        return last
    raise UserError(f"{run_dir}: no checkpoint found (checkpoints/last.ckpt is missing); "
                    "train the run first with mimic-run")


def load_run_config(run_dir: str | Path) -> DictConfig:
    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.exists():
        raise UserError(f"{run_dir}: not a run directory (no .hydra/config.yaml)")
    from mimic_runner.cli.run import register

    register()
    cfg = OmegaConf.load(cfg_path)
    assert isinstance(cfg, DictConfig)
    return cfg


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu",
             ) -> LoadedRun:
    """Rebuild a run's DataModule (set up) and LightningModule (weights loaded, eval mode)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    cfg = load_run_config(run_dir)
    ckpt = run_checkpoint(run_dir, checkpoint)
    dm = build_datamodule(cfg)
    dm.setup()
    module = build_module(cfg, dm)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    module.eval().to(device)
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else None
    return LoadedRun(run_dir=run_dir, cfg=cfg, module=module, datamodule=dm, checkpoint=ckpt,
                     metrics=metrics)

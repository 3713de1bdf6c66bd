"""One training run: fit, test, and the run directory (metrics.json, explanations.h5, ...)."""

from __future__ import annotations

import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from mimic_runner.errors import UserError
from mimic_runner.io import read_json, write_json
from mimic_runner.training.builders import build_datamodule, build_module, build_trainer

console = Console(stderr=True)


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return float(v.detach().cpu())
    return v


def train_and_test(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit and test one model; write and return ``metrics.json``'s content."""
    t_start = time.perf_counter()
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    ckpt_path = None
    if cfg.resume and last.exists():
        ckpt_path = str(last)
        console.print(f"resuming from {last}")
    elif ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # stale checkpoints of an earlier run in this folder
    for stale in ("explanations.h5", "member_cams.h5"):
        if ckpt_path is None:
            (run_dir / stale).unlink(missing_ok=True)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    module = build_module(cfg, dm)
    trainer = build_trainer(cfg, run_dir, module)

    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - t0
    if trainer.interrupted:
        raise KeyboardInterrupt
    has_best = bool(getattr(trainer.checkpoint_callback, "best_model_path", ""))
    trainer.test(module, datamodule=dm, ckpt_path="best" if has_best else None, verbose=False)

    metrics: dict[str, Any] = {k: _scalar(v) for k, v in trainer.callback_metrics.items()
                               if k.startswith("test/")}
    metrics.update({
        "model": cfg.model.name,
        "backbone": cfg.backbone.name,
        "seed": int(cfg.seed),
        "ensemble_size": int(module.ensemble_size),
        "dataset": cfg.data.name,
        "dataset_path": str(dm.resolve_path()),
        "explain_target": cfg.explain.target,
        "nss_variant": module.explanation_metrics.nss_variant_used,
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - t_start, 3),
        "epochs": int(trainer.current_epoch),
        "resumed": ckpt_path is not None,
        "best_checkpoint": str(Path(trainer.checkpoint_callback.best_model_path).relative_to(
            run_dir)) if has_best else None,
        "device": str(module.device),
    })
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    table = Table(title=f"{metrics['model']} · seed {metrics['seed']} · {run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(k for k in metrics if k.startswith("test/")):
        v = metrics[k]
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    table.add_row("train_seconds", f"{metrics['train_seconds']:.1f}")
    Console().print(table)


def run_experiment(cfg: DictConfig, run_dir: Path, multirun: bool) -> dict[str, Any] | None:
    """Skip finished runs, train otherwise; in a sweep, record a failure and carry on."""
    metrics_path = run_dir / "metrics.json"
    skip = cfg.skip_completed if cfg.skip_completed is not None else multirun
    if metrics_path.exists() and (skip or cfg.resume):
        console.print(f"[green]skip[/green] {run_dir}: metrics.json exists (finished run)")
        return read_json(metrics_path)
    failed_path = run_dir / "failed.json"
    failed_path.unlink(missing_ok=True)
    try:
        metrics = train_and_test(cfg, run_dir)
    except UserError as exc:
        if not multirun:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        _record_failure(failed_path, exc, cfg)
        return None
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if not multirun:
            raise
        _record_failure(failed_path, exc, cfg)
        return None
    print_summary(metrics, run_dir)
    return metrics


def _record_failure(path: Path, exc: BaseException, cfg: DictConfig) -> None:
    write_json(path, {
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
        "model": cfg.model.name,
        "seed": int(cfg.seed),
    })
    console.print(f"[red]failed[/red] {path.parent}: {type(exc).__name__}: {exc} "
                  f"(details in {path.name}); continuing with the other runs")


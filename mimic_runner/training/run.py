"""One training run: fit, test, explain, and the run folder's ``metrics.json``.

The library raises; it never exits and never changes the config it is given. ``mimic-run``
(:mod:`mimic_runner.cli.run`) maps a :class:`~mimic_runner.errors.UserError` to one line and
exit status 2; in a sweep a failed run is recorded in ``failed.json`` and the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mimic_runner.errors import RunInUse, UserError, no_room, no_room_message
from mimic_runner.log import quiet_lightning
from mimic_runner.rundir import RunDir
from mimic_runner.training.resume import RunHistory, resume_checkpoint, start_over, wants_resume
from mimic_runner.training.tracking import log_results

# torch and Lightning are imported where a run trains: the launching process (which only
# hosts the sweep summary) and skipped jobs then start in a fraction of the time.

log = logging.getLogger(__name__)


def _scalar(v: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        return float(v.detach().cpu())
    return v


def train_and_test(cfg: DictConfig, run_dir: Path, devices: list[int] | None = None
                   ) -> dict[str, Any]:
    """Fit and test one model in ``run_dir``; write and return ``metrics.json``'s content.

    ``devices`` overrides ``trainer.devices`` (the GPU slot a launcher gave this job). Nothing in
    the folder changes until everything is built: a resume first checks its checkpoint, and a
    new run removes an earlier run's checkpoints only right before it trains.
    """
    import lightning as L

    quiet_lightning()

    from mimic_runner.training.builders import (
        build_datamodule,
        build_loggers,
        build_module,
        build_trainer,
    )

    rd = RunDir(run_dir)
    t_start = time.perf_counter()
    ckpt_path = resume_checkpoint(cfg, rd)
    rd.failed.unlink(missing_ok=True)  # an earlier attempt's record: this one starts now

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    module = build_module(cfg, dm)
    trainer = build_trainer(cfg, run_dir, module, devices=devices, loggers=build_loggers(cfg))

    if ckpt_path is not None:
        log.info("resuming from %s", rd.last_checkpoint)
    else:
        start_over(rd)
    # Lightning's CSV logger deletes an existing metrics.csv when it starts; a resumed run
    # merges its history back, even when it fails or is interrupted.
    history = RunHistory(rd) if ckpt_path is not None else None

    try:
        metrics = _fit_and_test(cfg, rd, dm, module, trainer, ckpt_path)
    finally:
        if history is not None:
            history.restore()
    metrics["wall_seconds"] = round(time.perf_counter() - t_start, 3)
    rd.write_metrics(metrics)
    log_results(trainer.loggers, cfg, metrics)  # MLflow, W&B: config + metrics.json
    return metrics


def _fit_and_test(cfg: DictConfig, rd: RunDir, dm: Any, module: Any, trainer: Any,
                  ckpt_path: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    with _interrupts(trainer):
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - t0
    if trainer.interrupted:
        raise KeyboardInterrupt

    t1 = time.perf_counter()
    rule = str(cfg.get("test_checkpoint") or "best")
    tested = tested_checkpoint(trainer, rule)
    metrics: dict[str, Any] = {}
    # Validation scores of the tested checkpoint (forward passes only): what sweepers optimise.
    with _interrupts(trainer):
        rows = trainer.validate(module, datamodule=dm, ckpt_path=tested, verbose=False)
    for row in rows:
        metrics.update({k: _scalar(v) for k, v in row.items() if k.startswith("val/")})
    if cfg.explain.get("val_explanations"):
        metrics.update(evaluate(trainer, module, dm, tested, split="val"))
        metrics["val/objective"] = val_objective(metrics, float(cfg.explain.get("acc_floor", 0)))
    metrics.update(evaluate(trainer, module, dm, tested, split="test"))
    also = cfg.explain.get("also_test")
    if also and also != rule:
        metrics.update(evaluate(trainer, module, dm, tested_checkpoint(trainer, also),
                                split=f"test_{also}"))
        metrics[f"test_{also}/tested_epoch"] = checkpoint_epoch(
            tested_checkpoint(trainer, also))
    eval_seconds = time.perf_counter() - t1

    metrics.update({
        "model": cfg.model.name,
        "backbone": cfg.backbone.name,
        "seed": int(cfg.seed),
        "ensemble_size": int(module.ensemble_size),
        "dataset": cfg.data.name,
        "dataset_path": str(dm.resolve_path().resolve()),
        "explain_target": cfg.explain.target,
        "nss_variant": module.evaluation.nss_variant_used,
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "epochs": int(trainer.current_epoch),
        "test_checkpoint": rule,
        "tested_epoch": checkpoint_epoch(tested),
        "resumed": ckpt_path is not None,
        "best_checkpoint": (str(Path(trainer.checkpoint_callback.best_model_path).resolve())
                            if getattr(trainer.checkpoint_callback, "best_model_path", "")
                            else None),
        "tested_checkpoint_path": str(Path(tested).resolve()) if tested else None,
        "run_dir": str(rd.path.resolve()),
        "device": str(module.device),
    })
    return metrics


def check_run_folder(cfg: DictConfig, multirun: bool) -> None:
    """Before Hydra writes anything: the run folder (a sweep's folder) can be written, and a
    single run's folder is not in use by another run and, for ``resume=true``, holds a
    readable ``last.ckpt``. ``cfg`` is the composed config with its ``hydra`` node
    (:func:`mimic_runner.config.preflight`); each job checks again under its lock."""
    from mimic_runner.io import check_output_dir

    hydra = cfg.get("hydra")
    if hydra is None:
        return
    multirun = multirun or str(OmegaConf.select(cfg, "hydra.mode", default="")) == "MULTIRUN"
    try:
        folder = Path(str(hydra.sweep.dir if multirun else hydra.run.dir))
    except OmegaConfBaseException:  # an interpolation only Hydra's runtime resolves
        return
    check_output_dir(folder, f"paths.runs_dir={OmegaConf.select(cfg, 'paths.runs_dir')}")
    if multirun:
        return
    rd = RunDir(folder)
    busy = rd.lock_holder()
    if busy:
        raise RunInUse(busy)
    if not rd.metrics.exists():  # a finished run is skipped, whatever its checkpoint
        resume_checkpoint(cfg, rd)


@contextlib.contextmanager
def _interrupts(trainer: Any) -> Iterator[None]:
    """Ctrl+C inside ``trainer.fit/validate/test``: Lightning shuts down gracefully and then
    calls ``sys.exit(1)``; turn that back into the KeyboardInterrupt it was (exit status 130)."""
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def tested_checkpoint(trainer: Any, rule: str) -> str | None:
    """The checkpoint file ``rule`` picks: ``best`` (the windowed best by the monitored value)
    or ``last``; None when the run kept no checkpoint (callbacks=none): the weights in memory."""
    cb = trainer.checkpoint_callback
    if rule not in ("best", "last"):
        raise UserError(f"test_checkpoint={rule}: use best or last")
    if cb is None:
        return None
    path = getattr(cb, "best_model_path", "") if rule == "best" else getattr(
        cb, "last_model_path", "")
    return path or getattr(cb, "last_model_path", "") or None


def checkpoint_epoch(path: str | None) -> int | None:
    """The (0-based) epoch a checkpoint was saved after."""
    if not path:
        return None
    from mimic_runner.training.checkpoint import read_checkpoint

    return int(read_checkpoint(path, mmap=True)["epoch"])


def evaluate(trainer: Any, module: Any, dm: Any, ckpt: str | None, split: str
             ) -> dict[str, Any]:
    """One explained pass of ``ckpt`` over the test split (``split`` = ``test`` or
    ``test_<rule>``) or the validation split (``val``); returns its results."""
    module.eval_split = split
    try:
        if split == "val":
            # Through the DataModule, whose on_after_batch_transfer normalises the uint8
            # images (a bare val loader skips it); its test loader reads the val split here.
            dm.test_dataloader = dm.val_dataloader
        trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False)
    finally:
        module.eval_split = "test"
        vars(dm).pop("test_dataloader", None)
    return dict(module.test_results)


def val_objective(metrics: dict[str, Any], acc_floor: float) -> float:
    """``val/nss − 10·max(0, acc_floor − val/acc)``: validation gaze agreement, with accuracy
    below the floor penalised (the tuning sweep's objective, docs/reproducing.md)."""
    nss, acc = metrics.get("val/nss"), metrics.get("val/acc")
    if nss is None or acc is None or not math.isfinite(nss):
        return float("nan")
    return float(nss) - 10.0 * max(0.0, acc_floor - float(acc))


def run_experiment(cfg: DictConfig, run_dir: Path, multirun: bool,
                   devices: list[int] | None = None,
                   on_trained: Callable[[dict[str, Any], Path], None] | None = None
                   ) -> dict[str, Any] | None:
    """Skip a finished run, train otherwise; return its metrics (``on_trained`` gets them
    and the folder of a run it trained: the CLI prints them).

    A single run raises what went wrong. In a sweep (``multirun``) a failure is recorded in
    the run's ``failed.json`` and None is returned, so that the other runs go on.
    """
    rd = RunDir(run_dir)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(rd.locked())
        except RunInUse as exc:
            if not multirun:
                raise
            # Not recorded in failed.json: the folder belongs to the run that holds it.
            log.error("skip %s", exc)
            return None
        skip = cfg.skip_completed if cfg.skip_completed is not None else multirun
        if rd.metrics.exists() and (skip or wants_resume(cfg)):
            log.info("skip %s: metrics.json exists (finished run)", run_dir)
            return rd.read_metrics()
        try:
            metrics = train_and_test(cfg, run_dir, devices=devices)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if no_room(exc) is not None:
                # A write naming no file is a logger's (csv/, run.log), not atomic.
                named = bool(getattr(exc, "filename", None))
                exc = UserError(no_room_message(exc, where=_written_file(exc, rd),
                                                atomic=named) +
                                ", then continue the run with resume=true")
                if not multirun:
                    raise exc from None
            if not multirun:
                raise
            record_failure(run_dir, exc, cfg)
            return None
    if on_trained is not None:
        on_trained(metrics, run_dir)
    return metrics


def _written_file(exc: BaseException, rd: RunDir) -> str:
    """The file a failed write names, else the run folder (a logger's write names none)."""
    name = getattr(exc, "filename", None)
    return str(name) if name else f"{rd.path} (a file in it)"


def record_failure(run_dir: Path, exc: BaseException, cfg: DictConfig) -> None:
    """Write the run's ``failed.json`` (error and traceback) and log one line."""
    rd = RunDir(run_dir)
    rd.write_failure({
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
        "model": OmegaConf.select(cfg, "model.name", default=None),
        "seed": OmegaConf.select(cfg, "seed", default=None),
    })
    log.error("failed %s: %s: %s (details in %s); continuing with the other runs",
              rd.path, type(exc).__name__, exc, rd.failed.name)


def optimized_value(cfg: DictConfig, metrics: dict[str, Any] | None) -> float | None:
    """The value a multirun sweeper optimises: ``metrics[cfg.optimized_metric]``."""
    if metrics is None:
        return None
    key = str(cfg.get("optimized_metric") or "")
    value = metrics.get(key)
    # NaN is no result: Optuna's sweeper stops on one; None fails the trial and goes on.
    return float(value) if value is not None and math.isfinite(value) else None


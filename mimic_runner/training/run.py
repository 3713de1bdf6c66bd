"""One training run: fit, test, and the run directory (metrics.json, explanations.h5, ...).

Also what multirun sweeps need around it: a run's status from its folder, the end-of-sweep
summary (a Hydra callback), and the GPU/thread share of a job under the ``local`` launcher.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mimic_runner.errors import UserError
from mimic_runner.io import atomic_path, read_json, write_json

# torch and Lightning are imported where a run trains: the launching process (which only
# hosts the sweep summary) and skipped jobs then start in a fraction of the time.

# soft_wrap: status lines stay whole in logs (grep-able), whatever the width.
console = Console(stderr=True, soft_wrap=True)


def _scalar(v: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        return float(v.detach().cpu())
    return v


def wants_resume(cfg: DictConfig) -> bool:
    """``resume=true``, or a launcher whose jobs always resume (SLURM requeues a preempted job
    with the same overrides, so its ``last.ckpt`` is this very run's)."""
    return bool(cfg.get("resume")) or bool(OmegaConf.select(cfg, "launcher.resume",
                                                            default=False))


class _DropAdverts(logging.Filter):
    """Lightning prints a cloud-logging advert on every Trainer; it is noise in a sweep log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    """Silence console noise no user can act on (library adverts and internal deprecations)."""
    # rank_zero_info logs on this logger; a logger's filters see only its own records.
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in logger.filters):
        logger.addFilter(_DropAdverts())
    # Lightning 2.6's own use of a deprecated torch pytree API, warned on every Trainer.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def train_and_test(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit and test one model; write and return ``metrics.json``'s content."""
    import lightning as L

    _quiet_lightning()

    from mimic_runner.training.builders import build_datamodule, build_module, build_trainer

    t_start = time.perf_counter()
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    ckpt_path = None
    if wants_resume(cfg) and last.exists():
        ckpt_path = str(last)
        console.print(f"resuming from {escape(str(last))}")
    elif ckpt_dir.exists():
        if last.exists():
            console.print(f"[yellow]{escape(str(run_dir))}: an interrupted run left {last.name}; "
                          "starting over (pass resume=true to continue it instead)[/yellow]")
        shutil.rmtree(ckpt_dir)  # stale checkpoints of an earlier run in this folder
    for stale in ("explanations.h5", "member_cams.h5"):
        if ckpt_path is None:
            (run_dir / stale).unlink(missing_ok=True)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    module = build_module(cfg, dm)
    trainer = build_trainer(cfg, run_dir, module)

    # Lightning's CSV logger deletes an existing metrics.csv; a resumed run keeps its history.
    csv_log = run_dir / "csv" / "metrics.csv"
    earlier = read_csv_rows(csv_log) if ckpt_path is not None else []

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
    if earlier and csv_log.exists():
        write_csv_rows(csv_log, merge_epoch_logs(earlier, read_csv_rows(csv_log)))
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv_rows(path: Path, rows: list[dict[str, str]]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _epoch(row: dict[str, str]) -> float | None:
    try:
        e = float(row.get("epoch") or "nan")
    except ValueError:
        return None
    return e if math.isfinite(e) else None


def merge_epoch_logs(earlier: list[dict[str, str]], resumed: list[dict[str, str]]
                     ) -> list[dict[str, str]]:
    """A killed run's per-epoch rows before the epoch the resumed run starts at, then the
    resumed run's rows (rows of the epoch the kill interrupted are dropped). Rows the logger
    had not flushed yet (it writes every ``flush_logs_every_n_steps``) died with the run."""
    start = min((e for e in map(_epoch, resumed) if e is not None), default=math.inf)
    kept = [r for r in earlier if (e := _epoch(r)) is not None and e < start]
    return kept + resumed


def print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    table = Table(title=f"{metrics['model']} · seed {metrics['seed']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(k for k in metrics if k.startswith("test/")):
        v = metrics[k]
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    table.add_row("train_seconds", f"{metrics['train_seconds']:.1f}")
    out = Console()
    out.print(table)
    # On its own line: in the table's title it would be wrapped to the table's width.
    out.print(f"run directory: {escape(str(run_dir))}", soft_wrap=True, highlight=False)


def run_experiment(cfg: DictConfig, run_dir: Path, multirun: bool) -> dict[str, Any] | None:
    """Skip finished runs, train otherwise; in a sweep, record a failure and carry on."""
    metrics_path = run_dir / "metrics.json"
    skip = cfg.skip_completed if cfg.skip_completed is not None else multirun
    if metrics_path.exists() and (skip or wants_resume(cfg)):
        console.print(f"[green]skip[/green] {escape(str(run_dir))}: metrics.json exists "
                      "(finished run)")
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
        "model": OmegaConf.select(cfg, "model.name", default=None),
        "seed": OmegaConf.select(cfg, "seed", default=None),
    })
    console.print(f"[red]failed[/red] {escape(str(path.parent))}: "
                  f"{escape(f'{type(exc).__name__}: {exc}')} (details in {path.name}); "
                  "continuing with the other runs")



# -- run status and the end-of-sweep summary --------------------------------------------------

RUN_STATUSES = ("finished", "failed", "interrupted", "incomplete")


def run_status(run_dir: Path) -> str:
    """A run folder's state: ``finished`` (metrics.json), ``failed`` (failed.json),
    ``interrupted`` (a last.ckpt to resume from) or ``incomplete`` (nothing to resume)."""
    if (run_dir / "metrics.json").exists():
        return "finished"
    if (run_dir / "failed.json").exists():
        return "failed"
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        return "interrupted"
    return "incomplete"


def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (itself included) that holds a run's ``.hydra/config.yaml``."""
    return sorted(p.parent.parent for p in Path(root).rglob(".hydra/config.yaml")
                  if ".submitit" not in p.parts)


@dataclass
class SweepOutcome:
    """What one multirun invocation did, run folder by run folder."""

    trained: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.trained) + len(self.skipped) + len(self.failed) + len(self.incomplete)


def sweep_outcome(sweep_dir: Path, since: float) -> SweepOutcome:
    """Classify the runs a sweep started at ``since`` (epoch seconds) touched.

    Hydra rewrites a job's ``.hydra/config.yaml`` in the job's own process before calling it,
    skipped jobs included, so that file's mtime tells which folders belong to this invocation
    (whatever the launcher). A ``metrics.json`` older than that config was written by an earlier
    invocation: the run was skipped. (Comparing with ``since`` instead miscounted a run that had
    finished within the slack of a sweep started right after it; both files here come from one
    process, on one clock.)
    """
    out = SweepOutcome()
    for d in find_run_dirs(sweep_dir):
        config_mtime = (d / ".hydra" / "config.yaml").stat().st_mtime
        if config_mtime < since:
            continue  # a run of an earlier, different invocation
        status = run_status(d)
        if status == "finished":
            fresh = (d / "metrics.json").stat().st_mtime >= config_mtime
            (out.trained if fresh else out.skipped).append(d)
        elif status == "failed":
            out.failed.append(d)
        else:
            out.incomplete.append(d)
    return out


_last_outcome: SweepOutcome | None = None


def last_sweep_outcome() -> SweepOutcome | None:
    """The outcome :class:`SweepSummary` saw at the end of this process's last multirun."""
    return _last_outcome


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks``, set by every ``launcher/`` option): one summary line
    at the end of a multirun, in the launching process, whatever launcher ran the jobs."""

    def __init__(self) -> None:
        self.start = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Slack for coarse file-system timestamps (and small clock skew on shared disks).
        self.start = time.time() - 2.0

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_outcome
        sweep_dir = Path(str(config.hydra.sweep.dir))
        out = sweep_outcome(sweep_dir, self.start)
        _last_outcome = out
        parts = [f"{len(out.trained)} trained", f"{len(out.skipped)} skipped (finished before)"]
        if out.failed:
            parts.append(f"[red]{len(out.failed)} failed[/red]")
        if out.incomplete:
            parts.append(f"[yellow]{len(out.incomplete)} incomplete[/yellow]")
        console.print(f"sweep {escape(str(sweep_dir))}: {out.total} runs: " + ", ".join(parts))
        for d in out.failed:
            console.print(f"  [red]failed[/red] {escape(str(d / 'failed.json'))}")
        for d in out.incomplete:
            console.print(f"  [yellow]incomplete[/yellow] {escape(str(d))} (re-run with "
                          "resume=true)")


# -- the local (joblib) launcher: one GPU per job, or several jobs packed on one ----------------

def local_n_jobs(n_jobs: int | None, jobs_per_gpu: int, n_gpus: int) -> int:
    """Parallel jobs of the ``local`` launcher: ``n_jobs`` if given, else every GPU times
    ``jobs_per_gpu``, else 1 (CPU-only: parallel jobs would only split the same cores)."""
    if n_jobs is not None:
        if int(n_jobs) < 1:
            raise UserError(f"launcher.n_jobs={n_jobs}: use a positive number (or null)")
        return int(n_jobs)
    if jobs_per_gpu < 1:
        raise UserError(f"launcher.jobs_per_gpu={jobs_per_gpu}: use a positive number")
    return n_gpus * jobs_per_gpu if n_gpus else 1


def gpu_slot_order(job_num: int, n_gpus: int, jobs_per_gpu: int) -> list[tuple[int, int]]:
    """The (gpu, slot) pairs job ``job_num`` tries, in order, under the ``local`` launcher.

    Its first choice is GPU ``job_num % n_gpus`` — consecutive jobs, which run side by side,
    land on different GPUs, and ``jobs_per_gpu`` slots per GPU pack that many jobs on one — then
    every other slot, so a job that finds its GPU full takes a free one elsewhere.
    """
    if n_gpus < 1 or jobs_per_gpu < 1:
        return []
    slots = [(g, k) for k in range(jobs_per_gpu) for g in range(n_gpus)]
    first = (job_num % n_gpus) + n_gpus * ((job_num // n_gpus) % jobs_per_gpu)
    return slots[first:] + slots[:first]


def cpu_threads_per_job(n_cpus: int, n_jobs: int) -> int:
    """Torch threads for each of ``n_jobs`` parallel jobs, so they do not oversubscribe."""
    return max(1, n_cpus // max(1, n_jobs))


@contextlib.contextmanager
def local_job_resources(cfg: DictConfig, job_num: int, n_jobs: int) -> Iterator[int | None]:
    """Give a ``local``-launcher job its CPU threads and a GPU slot; yields the GPU index.

    The slot is a file lock held while the job runs, so no GPU holds more than
    ``launcher.jobs_per_gpu`` jobs even when the jobs finish out of order. The GPU is chosen
    through ``trainer.devices=[i]`` (and ``torch.cuda.set_device``) rather than
    ``CUDA_VISIBLE_DEVICES``: joblib reuses its worker processes, and CUDA reads that variable
    only once per process.
    """
    import torch
    from filelock import FileLock, Timeout

    torch.set_num_threads(cpu_threads_per_job(os.cpu_count() or 1, n_jobs))
    n_gpus = torch.cuda.device_count() if cfg.trainer.get("accelerator") in (
        "auto", "gpu", "cuda") else 0
    order = gpu_slot_order(job_num, n_gpus, int(cfg.launcher.get("jobs_per_gpu") or 1))
    if not order:
        yield None
        return
    lock_dir = Path(tempfile.gettempdir()) / f"mimic-runner-gpu-slots-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = None
    for gpu, k in order:
        candidate = FileLock(str(lock_dir / f"gpu{gpu}-slot{k}.lock"))
        try:
            candidate.acquire(timeout=0)
        except Timeout:
            continue
        lock = candidate
        break
    if lock is None:  # more parallel jobs than slots: wait for the first choice
        gpu, k = order[0]
        lock = FileLock(str(lock_dir / f"gpu{gpu}-slot{k}.lock"))
        lock.acquire()
    try:
        cfg.trainer.devices = [gpu]
        torch.cuda.set_device(gpu)
        console.print(f"job {job_num}: GPU {gpu} (slot {k})")
        yield gpu
    finally:
        lock.release()

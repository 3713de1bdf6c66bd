"""Resuming a run: which ``last.ckpt`` a run continues from (checked readable before anything in
the folder changes), the clean-up of a fresh start, and the merge of a resumed run's CSV history
with the one Lightning's logger replaces."""

from __future__ import annotations

import csv
import logging
import math
import shutil
import zipfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mimic_runner.errors import UserError
from mimic_runner.io import atomic_path
from mimic_runner.rundir import RunDir

log = logging.getLogger(__name__)


def wants_resume(cfg: DictConfig) -> bool:
    """``resume=true``, or a launcher whose jobs always resume (SLURM requeues a preempted job
    with the same overrides, so its ``last.ckpt`` is this very run's)."""
    return bool(cfg.get("resume")) or bool(OmegaConf.select(cfg, "launcher.resume",
                                                            default=False))


def resume_checkpoint(cfg: DictConfig, rd: RunDir) -> str | None:
    """The ``last.ckpt`` a ``resume=true`` run continues from (None: train from scratch).

    An unreadable one is a :class:`UserError` raised before anything in the folder changes."""
    if not (wants_resume(cfg) and rd.last_checkpoint.exists()):
        return None
    check_resumable(rd)
    return str(rd.last_checkpoint)


def check_resumable(rd: RunDir) -> None:
    """Raise one line naming ``last.ckpt`` and what to do when it cannot be resumed from.

    Reads the whole file (every zip member's CRC) and unpickles its index, much cheaper than
    restoring it, so that a truncated or damaged file is refused before Lightning's loggers and
    the clean-up of a fresh start have touched the run."""
    from mimic_runner.training.checkpoint import UnreadableCheckpoint, read_checkpoint

    path = rd.last_checkpoint
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise ValueError(f"damaged member {bad}")
        if "epoch" not in read_checkpoint(path, mmap=True):
            raise ValueError("not a Lightning checkpoint")
    except (UnreadableCheckpoint, OSError, ValueError, zipfile.BadZipFile) as exc:
        reason = getattr(exc, "reason", None) or " ".join(str(exc).split())[:80] \
            or type(exc).__name__
        best = _readable_checkpoints(rd)
        fix = (f"resume from the best checkpoint instead (cp '{best}' '{path}', then rerun "
               "with resume=true), or start over" if best else "start over")
        raise UserError(f"{path}: cannot resume, the checkpoint is unreadable ({reason}); "
                        f"{fix} by rerunning without resume=true (this replaces the run's "
                        "checkpoints); nothing in the run folder was changed") from None


def _readable_checkpoints(rd: RunDir) -> str | None:
    """The newest epoch checkpoint of the folder that opens as a zip archive, or None."""
    for cand in sorted(rd.checkpoints.glob("epoch*.ckpt"), reverse=True):
        try:
            with zipfile.ZipFile(cand) as z:
                if z.testzip() is None:
                    return str(cand)
        except (OSError, zipfile.BadZipFile, ValueError):
            continue
    return None


def start_over(rd: RunDir) -> None:
    """Remove what an earlier run in this folder left for a fresh start: its checkpoints (a
    later resume must not pick them up) and its explanation files."""
    if rd.checkpoints.exists():
        if rd.last_checkpoint.exists():
            log.warning("%s: an earlier run left %s; starting over (pass resume=true to "
                        "continue it instead)", rd.path, rd.last_checkpoint.name)
        shutil.rmtree(rd.checkpoints)
    rd.explanations.unlink(missing_ok=True)
    rd.member_cams.unlink(missing_ok=True)


class RunHistory:
    """A resumed run's ``csv/metrics.csv`` as it was, put back when the run ends: the rows
    before the epoch the run resumed at, then the new ones (or the original bytes when the run
    logged nothing new)."""

    def __init__(self, rd: RunDir) -> None:
        self.path = rd.csv_log
        self.raw = self.path.read_bytes() if self.path.is_file() else None
        self.rows = read_csv_rows(self.path)

    def restore(self) -> None:
        if self.raw is None:
            return
        if self.path.is_file() and self.path.read_bytes() == self.raw:
            return  # no logger rewrote it (logger=none, or a failure before it started)
        new = read_csv_rows(self.path)
        if not new:
            with atomic_path(self.path) as tmp:
                tmp.write_bytes(self.raw)
            return
        write_csv_rows(self.path, merge_epoch_logs(self.rows, new))


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



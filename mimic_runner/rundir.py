"""The run directory: the name of every artefact a run folder holds, and the one writer and the
one reader of each file that more than one module touches.

A run folder (``runs/<overrides>/``) holds::

    .hydra/config.yaml, hydra.yaml, overrides.yaml   written by Hydra
    checkpoints/epochNNN.ckpt, last.ckpt             Lightning's ModelCheckpoint (atomic here)
    csv/metrics.csv                                  per-epoch log (logger=csv)
    metrics.json                                     final test metrics   (write_metrics)
    explanations.h5                                  test-set maps        (write_explanations)
    member_cams.h5                                   ensembles' member maps (add_member_cams)
    failed.json                                      a failed sweep job   (write_failure)
    run.log                                          the job's log (Hydra's file handler)
    .run.lock                                        held while a run trains in the folder
    feedback/                                        mimic-feedback's workspace
    global_explanations[_split].h5, global_maps[_split].png   mimic-explain global
    peppr[_split].csv|json|png                                 mimic-explain peppr

Everything else refers to these through :class:`RunDir`, never by a string literal.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mimic_runner.errors import RunInUse, UserError
from mimic_runner.io import hdf5_image, read_json, write_bytes_atomic, write_json

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against each other
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RUN_STATUSES = ("finished", "failed", "interrupted", "incomplete")
# Run folders whose lock this process holds (a nested locked() on one of them is a no-op).
_HELD: set[Path] = set()


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder. Cheap to make; touches no file until asked."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    # -- written by Hydra ---------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    @property
    def hydra_config(self) -> Path:
        return self.path / ".hydra" / "hydra.yaml"

    @property
    def overrides(self) -> Path:
        return self.path / ".hydra" / "overrides.yaml"

    @property
    def log(self) -> Path:
        return self.path / "run.log"

    # -- training ------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def csv_log(self) -> Path:
        return self.path / "csv" / "metrics.csv"

    @property
    def lock(self) -> Path:
        return self.path / ".run.lock"

    # -- results -------------------------------------------------------------------------------
    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def explanations(self) -> Path:
        return self.path / "explanations.h5"

    @property
    def member_cams(self) -> Path:
        return self.path / "member_cams.h5"

    @property
    def failed(self) -> Path:
        return self.path / "failed.json"

    @property
    def feedback(self) -> Path:
        return self.path / "feedback"

    # -- mimic-explain (``out`` instead of the run folder when the user asks) -------------------
    @staticmethod
    def _suffix(split: str) -> str:
        return "" if split == "test" else f"_{split}"

    def global_maps(self, split: str = "test", out: Path | None = None) -> Path:
        return (out or self.path) / f"global_explanations{self._suffix(split)}.h5"

    def global_figure(self, split: str = "test", out: Path | None = None) -> Path:
        return (out or self.path) / f"global_maps{self._suffix(split)}.png"

    def peppr(self, ext: str, split: str = "test", out: Path | None = None) -> Path:
        """``peppr[_split].{csv,json,png}``."""
        return (out or self.path) / f"peppr{self._suffix(split)}.{ext}"

    # -- state ---------------------------------------------------------------------------------
    def status(self) -> str:
        """``finished`` (metrics.json), ``failed`` (failed.json), ``interrupted`` (a last.ckpt
        to resume from) or ``incomplete`` (nothing to resume)."""
        if self.metrics.exists():
            return "finished"
        if self.failed.exists():
            return "failed"
        if self.last_checkpoint.exists():
            return "interrupted"
        return "incomplete"

    def is_run(self) -> bool:
        return self.config.exists()

    # -- one run per folder ----------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's ``.run.lock`` while a run works in it.

        Another process holding it raises :class:`~mimic_runner.errors.RunInUse` at once,
        naming its pid. The lock is an ``flock`` on the file, which the kernel drops when its
        holder dies, so a folder left by a killed run (kill -9, a node lost) is taken over; the
        file itself stays (removing it would let a third process lock a new file while a
        second still waits on the old one) and holds the holder's pid, host and start time.
        """
        key = self.path.resolve()
        if fcntl is None or key in _HELD:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunInUse(self._busy(_read_fd(fd))) from None
                # A file system without locks (some network mounts): run unprotected.
                log.warning("%s: cannot lock the run folder (%s); make sure no other run "
                            "uses it", self.path, exc.strerror)
                yield
                return
            previous = _read_fd(fd)
            if previous:
                log.info("%s: the run that held this folder (%s) ended without releasing it; "
                         "taking it over", self.path, _describe(previous))
            record = (f"{os.getpid()} {socket.gethostname()} "
                      f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)
                os.ftruncate(fd, 0)  # empty = released cleanly (a stale lock keeps its pid)
        finally:
            os.close(fd)  # closing the file drops the flock

    def lock_holder(self) -> str | None:
        """The message :meth:`locked` would raise when another process holds the folder now,
        else None; takes nothing (a check before Hydra rewrites the folder's config)."""
        if fcntl is None or not self.lock.is_file() or self.path.resolve() in _HELD:
            return None
        try:
            fd = os.open(self.lock, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return self._busy(_read_fd(fd))
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _busy(self, holder: str) -> str:
        return (f"{self.path}: another run is using this folder ({_describe(holder)}); wait "
                "for it to finish (or stop it), or train into another folder with "
                "paths.runs_dir=...")

    # -- metrics.json and failed.json ---------------------------------------------------------
    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Valid JSON whatever the values: NaN and ±Inf become null (their count is recorded
        under ``undefined_metrics``), paths absolute."""
        clean, undefined = {}, []
        for k, v in metrics.items():
            if isinstance(v, float) and not math.isfinite(v):
                undefined.append(k)
                v = None
            clean[k] = v
        if undefined:
            clean["undefined_metrics"] = sorted(undefined)
        write_json(self.metrics, clean)

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` as a dict (undefined values as NaN), or None when missing or
        unreadable."""
        try:
            data = read_json(self.metrics)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        for k in data.get("undefined_metrics", []):
            if data.get(k) is None:
                data[k] = float("nan")
        return data

    def write_failure(self, record: dict[str, Any]) -> None:
        write_json(self.failed, record)

    def read_failure(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.failed.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def checkpoint(self, which: str = "best") -> Path:
        """``best`` (as recorded in metrics.json), ``last``, or a path to a checkpoint file."""
        if which not in ("best", "last"):
            p = Path(which)
            if not p.is_file():
                raise UserError(f"{p}: no such checkpoint file; pass best, last or the path "
                                "of a .ckpt file")
            return p
        if which == "best":
            best = (self.read_metrics() or {}).get("best_checkpoint")
            if best:
                # Absolute since 0.2; relative to the run folder before. A moved run folder still
                # finds its checkpoint by name.
                for cand in (Path(best), self.path / best, self.checkpoints / Path(best).name):
                    if cand.is_file():
                        return cand
        if self.last_checkpoint.is_file():
            return self.last_checkpoint
        raise UserError(f"{self.path}: no checkpoint found (checkpoints/last.ckpt is missing); "
                        "train the run first with mimic-run")

    # -- explanations.h5 ------------------------------------------------------------------------
    def write_explanations(self, maps: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                           ids: np.ndarray, class_names: list[str], explain_target: str,
                           model: str, extra: dict[str, np.ndarray] | None = None) -> None:
        """Test-set maps (N, H, W) stored as float16, labels, predictions (argmax of
        ``probabilities`` (N, K)), ids in test-split order; ``extra`` adds datasets (e.g. the
        true-label maps)."""
        import h5py

        def build(f: h5py.File) -> None:
            f.create_dataset("maps", data=maps.astype(np.float16), compression="gzip",
                             compression_opts=1)
            f.create_dataset("labels", data=labels.astype(np.int64))
            f.create_dataset("predictions", data=probabilities.argmax(-1).astype(np.int64))
            f.create_dataset("probabilities", data=probabilities.astype(np.float32))
            f.create_dataset("ids", data=np.asarray(ids).astype(object),
                             dtype=h5py.string_dtype("utf-8"))
            for k, v in (extra or {}).items():
                f.create_dataset(k, data=v, compression="gzip", compression_opts=1)
            f.attrs["class_names"] = np.asarray(class_names, dtype=object)
            f.attrs["explain_target"] = explain_target
            f.attrs["model"] = model

        # Built in memory, then written in one go: a full disk is then one clean OSError.
        write_bytes_atomic(self.explanations, hdf5_image(build))

    def read_explanations(self) -> Explanations:
        """The stored test-set explanations; one :class:`UserError` line when unreadable."""
        import h5py

        path = self.explanations
        if not path.exists():
            raise UserError(f"{path}: missing (the run did not finish its test); rerun mimic-run")
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("maps", "labels", "predictions", "ids") if k not in f]
                if missing:
                    raise UserError(f"{path}: key '{missing[0]}' missing; rerun mimic-run")
                target = f.attrs.get("explain_target", "pred")
                extra = {k: f[k][()] for k in f
                         if k not in ("maps", "labels", "predictions", "probabilities", "ids")}
                return Explanations(
                    maps=f["maps"][()].astype(np.float32),
                    labels=f["labels"][()].astype(np.int64),
                    predictions=f["predictions"][()].astype(np.int64),
                    probabilities=(f["probabilities"][()].astype(np.float32)
                                   if "probabilities" in f else None),
                    ids=np.asarray(f["ids"].asstr()[()]),
                    explain_target=str(target.decode() if isinstance(target, bytes)
                                       else target),
                    extra=extra)
        except OSError as exc:
            raise UserError(f"{path}: not a readable HDF5 file ({exc}); rerun mimic-run") from None

    # -- member_cams.h5 -------------------------------------------------------------------------
    def add_member_cams(self, epoch: int, maps: np.ndarray, mean_image: np.ndarray | None
                        ) -> None:
        """Add (or replace) ``epoch_<epoch>`` (N, H, W) by rewriting the file atomically."""
        import h5py

        old: dict[str, np.ndarray] = {}
        if self.member_cams.exists():
            with h5py.File(self.member_cams, "r") as f:
                old = {k: f[k][()] for k in f}
        old[f"epoch_{epoch}"] = maps.astype(np.float32)
        if "mean_image" not in old and mean_image is not None:
            old["mean_image"] = mean_image.astype(np.float32)

        def build(f: h5py.File) -> None:
            for k, v in old.items():
                f.create_dataset(k, data=v)

        write_bytes_atomic(self.member_cams, hdf5_image(build))

    def read_member_cams(self) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
        """``{epoch: (N, H, W)}`` and the mean validation image (H, W) or None."""
        import h5py

        with h5py.File(self.member_cams, "r") as f:
            epochs = sorted(int(k.split("_", 1)[1]) for k in f if k.startswith("epoch_"))
            cams = {e: f[f"epoch_{e}"][()] for e in epochs}
            mean_image = f["mean_image"][()] if "mean_image" in f else None
        return cams, mean_image


def _read_fd(fd: int) -> str:
    return os.pread(fd, 512, 0).decode("utf-8", "replace").strip()


def _describe(holder: str) -> str:
    """``"pid 123 on host since 2025-01-01T10:00:00"`` from a lock file's record."""
    parts = holder.split()
    if len(parts) >= 3 and parts[0].isdigit():
        return f"pid {parts[0]} on {parts[1]} since {parts[2]}"
    return "pid unknown" if not holder else f"holder {holder[:80]}"


@dataclass
class Explanations:
    """A run's ``explanations.h5``: maps (N, H, W) float32 and per-image rows, test order."""

    maps: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray | None
    ids: np.ndarray
    explain_target: str
    extra: dict[str, np.ndarray]


def find_run_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Every folder under ``root`` (itself included) that holds a run's ``.hydra/config.yaml``."""
    return sorted(p.parent.parent for p in Path(root).rglob(".hydra/config.yaml")
                  if ".submitit" not in p.parts)

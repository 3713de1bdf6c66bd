"""Generate a synthetic dataset once into a cache folder, safely under concurrent sweep jobs."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from mimic_runner.data.schema import write_dataset
from mimic_runner.errors import no_room

SYNTH_KINDS = ("synth_cxr", "synth_smear")


def synth_cache_path(kind: str, params: dict[str, Any], cache_dir: str | Path) -> Path:
    """The cache file for a generator, its version and its parameters (a hash names the file),
    so a changed generator never serves data made by an older one."""
    version = getattr(importlib.import_module(f"mimic_runner.data.{kind}"), "GENERATOR_VERSION", 0)
    key = json.dumps({"kind": kind, "version": version, "params": params}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / f"{kind}-{digest}.h5"


def ensure_synth(kind: str, params: dict[str, Any], cache_dir: str | Path) -> Path:
    """Return the cached dataset file, generating it first if needed.

    A file lock serialises concurrent jobs, and the writer renames a complete temporary file into
    place, so several sweep jobs starting at once generate the data exactly once and no reader
    ever sees a partial file.
    """
    from mimic_runner.errors import UserError

    if kind not in SYNTH_KINDS:
        raise UserError(f"unknown synthetic dataset '{kind}'; "
                        f"choose one of {', '.join(SYNTH_KINDS)}")
    path = synth_cache_path(kind, params, cache_dir)
    if path.exists():
        return path
    # Refuse an unusable cache folder before generating (and before the lock file needs it).
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cache folder {path.parent}: cannot create it "
                        f"({exc.strerror or exc}); set paths.cache_dir to a writable "
                        "folder") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"cache folder {path.parent} is not writable; set paths.cache_dir to "
                        "a writable folder")
    lock_path = Path(str(path) + ".lock")
    try:
        lock = FileLock(str(lock_path))
        lock.acquire()
    except OSError as exc:
        raise UserError(f"cache folder {path.parent}: cannot create the lock file "
                        f"{lock_path.name} ({no_room(exc) or exc.strerror or exc}); free some "
                        "space or set paths.cache_dir to another folder") from None
    try:
        if not path.exists():  # another job may have finished it while we waited
            module = importlib.import_module(f"mimic_runner.data.{kind}")
            try:
                arrays = module.generate(**params)
            except TypeError as exc:
                raise UserError(f"data.synth.params for {kind}: {exc}") from None
            write_dataset(path, **arrays)
    finally:
        _remove_lock_file(lock_path)
        lock.release()
    return path


def _remove_lock_file(lock_path: Path) -> None:
    """Remove the lock file while still holding the lock, so that no empty ``.lock`` outlives
    the job (after a full disk it was all that was left).

    Safe: a job already waiting on the removed file, or one that makes a new lock file, checks
    for the data file once it holds its lock; after a success it finds it and returns, after
    a failure it generates it again (two such jobs write the same bytes, each atomically)."""
    with contextlib.suppress(OSError):
        lock_path.unlink()

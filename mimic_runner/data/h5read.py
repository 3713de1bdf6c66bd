"""Reading an HDF5 dataset file safely, piece by piece: one-line messages, the memory a file
declares and the memory available, bounded block reads, ids, the file-type and link checks.
Used by the validator (:mod:`mimic_runner.data.validate`) and the reader
(:func:`mimic_runner.data.schema.read_dataset`)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import h5py
import numpy as np

from mimic_runner.data.spec import _BLOCK_BYTES, _ID_BYTES, MAP_KEYS, REQUIRED_KEYS, Progress
from mimic_runner.errors import DatasetError
from mimic_runner.io import file_kind


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (HDF5's messages span several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _text(value: object, limit: int = 80) -> str:
    """Text read from a file, fit for a one-line message: control characters (a newline in a
    key name or an id) escaped, and shortened to ``limit`` characters."""
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _decode(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def available_memory() -> int | None:
    """Bytes of memory this process may still allocate, or None when unknown.

    ``MemAvailable`` of ``/proc/meminfo``, capped by a cgroup v2 memory limit (containers and
    SLURM jobs see the host's memory in ``/proc/meminfo``); elsewhere the physical memory.
    """
    avail: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            room = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.3g} MiB"


def declared_bytes(f: h5py.File) -> int:
    """In-memory size of everything :func:`read_dataset` would load, from the shapes alone."""
    total = 0
    for key in (*REQUIRED_KEYS, *MAP_KEYS):
        if key in f and isinstance(f[key], h5py.Dataset):
            ds = f[key]
            item = _ID_BYTES if key == "ids" else ds.dtype.itemsize
            total += int(np.prod(ds.shape, dtype=object)) * item
    return total


def _noop(_: str) -> None:
    """A progress callback that does nothing (reading in this process, unbounded)."""


def _read(ds: h5py.Dataset, sel: slice | tuple[()], shown: Path, key: str) -> np.ndarray:
    """``ds[sel]``; an unreadable chunk (corrupted or truncated file) becomes one clear line."""
    try:
        return ds[sel]
    except Exception as exc:  # h5py raises OSError, RuntimeError, ValueError, ... for damage
        raise DatasetError(f"{shown}: key '{key}': the stored data cannot be read "
                           f"({_one_line(exc)}); the file is damaged (a corrupted or truncated "
                           "chunk): copy or generate it again") from None


def _rows_per_block(ds: h5py.Dataset) -> int:
    row = int(np.prod(ds.shape[1:], dtype=object)) * ds.dtype.itemsize
    return max(1, _BLOCK_BYTES // max(1, row))


def _read_ids(ds: h5py.Dataset, shown: Path, progress: Progress = _noop) -> np.ndarray:
    """The ids as an object array of str; a row that is not UTF-8 is named."""
    out = np.empty(ds.shape[0], dtype=object)
    step = max(1, _BLOCK_BYTES // _ID_BYTES)
    for start in range(0, ds.shape[0], step):
        progress(f"key 'ids' (rows from {start})")
        block = _read(ds, slice(start, start + step), shown, "ids")
        for i, raw in enumerate(block.tolist()):
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DatasetError(
                        f"{shown}: key 'ids': row {start + i} is not valid UTF-8 ({raw[:24]!r}); "
                        "store the ids as UTF-8 text") from None
            out[start + i] = str(raw)
    return out


def _check_file(p: Path, shown: Path) -> None:
    """Refuse, without opening it, a path that is not a readable regular file: a FIFO would
    block the reader for ever, a device would be read without end."""
    try:
        mode = os.stat(p).st_mode
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DatasetError(f"{shown}: no such dataset file; create it with `mimic-data "
                               f"synth-cxr --out {shown}` or `mimic-data prepare ...`") from None
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
            raise DatasetError(f"{str(shown)[:80]}...: the path is too long (a component or the "
                               "whole path exceeds the file system's limit); give a shorter "
                               "path") from None
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise DatasetError(f"{shown}: cannot look at the file ({reason})") from None
    if stat.S_ISDIR(mode):
        raise DatasetError(f"{shown}: is a directory, not a dataset file; pass the .h5 file "
                           "itself")
    if not stat.S_ISREG(mode):  # a FIFO, device or socket: never opened
        raise DatasetError(f"{shown}: is {file_kind(mode)}, not a regular file; pass the .h5 "
                           "file itself")
    if not os.access(p, os.R_OK):
        raise DatasetError(f"{shown}: permission denied; make the file readable")


def _link_problem(f: h5py.File, key: str) -> str | None:
    """Why ``key`` cannot be read as stored in this file: a soft or external link (refused,
    not followed: a dangling one fails deep inside h5py, an external one opens another file,
    perhaps a FIFO), or None. Reads the link itself, never what it points to."""
    link = f.get(key, getlink=True)
    if isinstance(link, h5py.SoftLink):
        return (f"is a soft link to '{_text(link.path)}'; mimic-runner reads only arrays stored "
                "under their own name (copy the array there)")
    if isinstance(link, h5py.ExternalLink):
        return (f"is an external link to '{_text(link.path)}' in {_text(link.filename)}; "
                "mimic-runner reads only arrays stored in the file itself (copy the array into "
                "it)")
    return None


def _plain(value: object) -> object:
    """An informative attribute as plain Python (str, number, bool, list), for printing."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return " ".join(str(value).split())[:200]

"""The HDF5 dataset schema (README, "Data: bring your own"): writer, validator and reader.

| key          | dtype, shape              | meaning                                   |
| ------------ | ------------------------- | ----------------------------------------- |
| `images`     | uint8 (N, C, H, W)        | C = 1 (grey) or 3 (RGB); H, W >= 8        |
| `labels`     | int64 (N,)                | index into `attrs["class_names"]`         |
| `split`      | uint8 (N,)                | 0 train, 1 val, 2 test                    |
| `ids`        | utf-8 str (N,)            | stable image ids                          |
| `gaze`       | float32 (N, H, W), opt.   | human attention heatmap, non-negative     |
| `fixations`  | bool (N, H, W), opt.      | pixels holding at least one fixation      |
| `confounder` | bool (N, H, W), opt.      | where a known shortcut artefact lies      |
| `finding`    | bool (N, H, W), opt.      | the finding's true extent (all False when |
|              |                           | the image has none, e.g. Normal)          |

Attributes: `class_names` (a list of strings, not one string), `schema_version` (the integer
1), `source`, `aligned`.
Every problem is raised as :class:`~mimic_runner.errors.DatasetError` naming the file, the key
and what is wrong, before anything large is read: the declared array sizes are checked against
the memory available first, and data are read in bounded blocks. Whatever h5py or libhdf5 raise
on a damaged file becomes that one line too. Soft and external links in place of a key are
refused, not followed; a path that is not a regular file (FIFO, device, socket) is refused
before it is opened; a file is read in a child process that must keep making progress
(:mod:`mimic_runner.data.watchdog`), so that a file on which libhdf5 loops or crashes is
refused instead of hanging or killing the caller.

The definition lives in :mod:`mimic_runner.data.spec`, the checks in
:mod:`mimic_runner.data.validate`, the piecewise reading in :mod:`mimic_runner.data.h5read`;
this module writes and reads whole datasets and re-exports the names callers use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from mimic_runner.data.h5read import (
    _check_file,
    _noop,
    _one_line,
    _read,
    _read_ids,
    _rows_per_block,
    available_memory,
    declared_bytes,
)
from mimic_runner.data.spec import (
    MAP_DTYPES,
    MAP_KEYS,
    MIN_IMAGE_SIDE,
    REQUIRED_KEYS,
    SCHEMA_VERSION,
    SPLITS,
    DatasetInfo,
    Progress,
)
from mimic_runner.data.validate import _validate, validate_dataset
from mimic_runner.errors import DatasetError, UserError, no_room
from mimic_runner.io import (
    atomic_path,
    check_output_dir,
    check_path_length,
    hdf5_image,
    refuse_non_regular_output,
)

__all__ = ["MAP_DTYPES", "MAP_KEYS", "MIN_IMAGE_SIDE", "REQUIRED_KEYS", "SCHEMA_VERSION", "SPLITS",
           "DatasetInfo", "available_memory", "check_output_file", "declared_bytes",
           "read_dataset", "validate_dataset", "write_dataset"]


# --------------------------------------------------------------------------- writing


def check_output_file(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse, before any work is done, an output file that cannot be written: a folder in its
    place, a FIFO, device or socket (even with ``overwrite``), an existing file without
    ``overwrite``, or a folder that cannot be made or written
    (:func:`mimic_runner.io.check_output_dir`). Raises a :class:`UserError` naming the path."""
    out = check_path_length(path, "output")
    if out.is_dir():
        raise UserError(f"{out}: output is a directory; give a file name such as "
                        f"{out / 'data.h5'}")
    refuse_non_regular_output(out)  # a FIFO or device is refused even with overwrite
    if out.exists() and not overwrite:
        raise UserError(f"{out}: output exists; pass --overwrite to replace it")
    check_output_dir(out.parent, str(out))
    return out


def _file_image(
    images: np.ndarray, labels: np.ndarray, split: np.ndarray, ids: Sequence[str] | np.ndarray,
    class_names: Sequence[str], maps: dict[str, np.ndarray | None], source: str, aligned: bool,
    extra_attrs: dict[str, object] | None,
) -> memoryview:
    """The bytes of the HDF5 file holding these arrays, built in memory
    (:func:`mimic_runner.io.hdf5_image`: a full disk is then one clean ``OSError`` instead of
    HDF5's unflushable objects, which crashed the interpreter at exit)."""

    def build(f: h5py.File) -> None:
        chunks = (1, *images.shape[1:])
        f.create_dataset("images", data=np.asarray(images, dtype=np.uint8), chunks=chunks)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        f.create_dataset("split", data=np.asarray(split, dtype=np.uint8))
        f.create_dataset("ids", data=np.asarray([str(i) for i in ids], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        for key, arr in maps.items():
            if arr is not None:
                f.create_dataset(key, data=np.asarray(arr, dtype=MAP_DTYPES[key]),
                                 chunks=(1, *arr.shape[1:]), compression="gzip",
                                 compression_opts=1)
        f.attrs["class_names"] = np.asarray(list(class_names), dtype=object)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["source"] = source
        f.attrs["aligned"] = bool(aligned)
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v

    return hdf5_image(build)


def write_dataset(
    path: str | os.PathLike[str],
    *,
    images: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    ids: Sequence[str] | np.ndarray,
    class_names: Sequence[str],
    gaze: np.ndarray | None = None,
    fixations: np.ndarray | None = None,
    confounder: np.ndarray | None = None,
    finding: np.ndarray | None = None,
    source: str = "",
    aligned: bool = True,
    overwrite: bool = False,
    extra_attrs: dict[str, object] | None = None,
) -> Path:
    """Write a dataset atomically (temporary file, validated, then renamed) and return its path.

    A write that fails (full disk, quota, file-size limit) raises a :class:`UserError` and leaves
    no file behind.
    """
    final = check_output_file(path, overwrite)
    maps = {"gaze": gaze, "fixations": fixations, "confounder": confounder, "finding": finding}
    image = _file_image(images, labels, split, ids, class_names, maps, source, aligned,
                        extra_attrs)
    try:
        with atomic_path(final, overwrite=overwrite) as tmp:
            tmp.write_bytes(image)  # atomic_path flushes it to disk before the rename
            validate_dataset(tmp, require_splits=(), display_path=final, check_memory=False,
                             bounded=False)  # bytes this process made, not a stranger's file
    except OSError as exc:
        raise UserError(f"{final}: cannot write the dataset ({_write_problem(exc)}); nothing "
                        "was written. Free some space or choose another output folder") from None
    return final


def _write_problem(exc: OSError) -> str:
    return no_room(exc) or _one_line(exc)


# --------------------------------------------------------------------------- reading


def _read_rows(ds: h5py.Dataset, shown: Path, key: str, progress: Progress,
               rows: np.ndarray | None) -> np.ndarray:
    """The whole array (or the sorted ``rows`` of it), read in blocks of about 64 MiB with a
    progress step before each, so that a large healthy file never looks stuck."""
    n = ds.shape[0]
    out = np.empty((n if rows is None else len(rows), *ds.shape[1:]), ds.dtype)
    step, at = _rows_per_block(ds), 0
    for start in range(0, n, step):
        progress(f"key '{key}' (rows from {start})")
        block = _read(ds, slice(start, start + step), shown, key)
        if rows is not None:
            block = block[rows[(rows >= start) & (rows < start + step)] - start]
        out[at:at + len(block)] = block
        at += len(block)
    return out


def _load(p: Path, shown: Path, split: str | None, keys: tuple[str, ...] | None,
          require_splits: tuple[str, ...], progress: Progress = _noop,
          ) -> tuple[DatasetInfo, dict[str, np.ndarray]]:
    """:func:`read_dataset`'s work: validate, then read each wanted key (restricted to
    ``split``). In a child process (``progress`` has an ``array`` method, see
    :class:`mimic_runner.data.watchdog.Reporter`) each array is sent as soon as it is read and
    the returned dict is empty; here, it holds them."""
    info = _validate(p, shown, require_splits, True, False, progress)
    wanted = list(keys) if keys is not None else [*REQUIRED_KEYS, *info.maps]
    send = getattr(progress, "array", None)
    out: dict[str, np.ndarray] = {}
    key = "split"
    try:
        with h5py.File(p, "r") as f:
            sel = slice(None)
            if split is not None:
                progress("key 'split'")
                mask = _read(f["split"], (), shown, "split") == SPLITS.index(split)
                if not mask.any():
                    raise DatasetError(f"{shown}: the '{split}' split is empty")
                sel = np.flatnonzero(mask)
            for key in wanted:
                if key not in (*REQUIRED_KEYS, *info.maps):
                    raise DatasetError(f"{shown}: key '{key}': missing")
                progress(f"key '{key}'")
                if key == "ids":
                    arr = _read_ids(f[key], shown, progress)
                    arr = arr[sel] if isinstance(sel, np.ndarray) else arr
                else:
                    arr = _read_rows(f[key], shown, key, progress,
                                     sel if isinstance(sel, np.ndarray) else None)
                if send is not None:
                    send(key, arr)
                else:
                    out[key] = arr
                del arr
    except DatasetError:
        raise
    except Exception as exc:  # h5py or libhdf5 on a damaged file
        raise DatasetError(f"{shown}: key '{key}': cannot be read ({type(exc).__name__}: "
                           f"{_one_line(exc)}); the file is damaged: copy or generate it "
                           "again") from None
    return info, out


def read_dataset(
    path: str | os.PathLike[str],
    split: str | None = None,
    keys: Sequence[str] | None = None,
    require_splits: Sequence[str] = SPLITS,
    *,
    bounded: bool = True,
) -> tuple[dict[str, np.ndarray], DatasetInfo]:
    """Validate and load a dataset into memory.

    Returns ``(arrays, info)``; ``arrays`` holds ``images``, ``labels``, ``split``, ``ids`` and the
    optional maps present (or only ``keys``), restricted to ``split`` when given. With
    ``bounded`` (the default) the file is validated and read in a child process that must keep
    making progress, which sends each array here as it is read
    (:func:`mimic_runner.data.watchdog.run_bounded`): a file on which libhdf5 loops or crashes
    is refused in one line, and this process never calls libhdf5 on it.
    """
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    p = Path(path)
    _check_file(p, p)
    args = (p, p, split, tuple(keys) if keys is not None else None, tuple(require_splits))
    if not bounded:
        info, out = _load(*args)
        return out, info
    from mimic_runner.data.watchdog import run_bounded

    arrays: dict[str, np.ndarray] = {}
    info, _ = run_bounded(_load, *args, what=str(p), arrays=arrays)
    wanted = list(keys) if keys is not None else [*REQUIRED_KEYS, *info.maps]
    return {k: arrays[k] for k in wanted}, info

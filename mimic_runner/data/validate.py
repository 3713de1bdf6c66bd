"""Checking a dataset file against the schema (:mod:`mimic_runner.data.schema`), step by step:
keys, attributes, shapes and dtypes, the memory it needs, then the values. Every problem is
one :class:`~mimic_runner.errors.DatasetError` line naming the file and the key or attribute."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from mimic_runner.data.h5read import (
    _check_file,
    _decode,
    _gib,
    _link_problem,
    _noop,
    _one_line,
    _plain,
    _read,
    _read_ids,
    _rows_per_block,
    _text,
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
from mimic_runner.errors import DatasetError

Fail = Callable[[str, str], DatasetError]  # (key, problem) -> the error naming the file
Attr = Callable[[str], object]  # an attribute, decoded (None when absent)


def _validate(p: Path, shown: Path, require_splits: tuple[str, ...], check_memory: bool,
              deep: bool, progress: Progress = _noop) -> DatasetInfo:
    """:func:`validate_dataset`'s work on a checked path. Any error of h5py or libhdf5 becomes
    one :class:`DatasetError` naming the file and the key or attribute being read;
    ``progress(step)`` is called before every read (see :mod:`.watchdog`)."""
    where = ["opening it"]

    def step(what: str) -> None:
        where[0] = what
        progress(what)

    try:
        return _validate_open(p, shown, require_splits, check_memory, deep, step)
    except DatasetError:
        raise
    except Exception as exc:  # h5py/libhdf5 on a damaged file: KeyError, RuntimeError, ...
        raise DatasetError(f"{shown}: {where[0]}: cannot be read ({type(exc).__name__}: "
                           f"{_one_line(exc)}); the file is damaged or not in the schema: copy "
                           "or generate it again") from None


def _validate_open(p: Path, shown: Path, require_splits: tuple[str, ...], check_memory: bool,
                   deep: bool, step: Progress) -> DatasetInfo:
    step("opening it")
    try:
        f = h5py.File(p, "r")
    except Exception as exc:
        raise DatasetError(f"{shown}: not a readable HDF5 file ({_one_line(exc)})") from None

    def fail(key: str, problem: str) -> DatasetError:
        return DatasetError(f"{shown}: key '{key}': {problem}")

    def attr(name: str) -> object:
        step(f"attribute '{name}'")
        try:
            return _decode(f.attrs[name]) if name in f.attrs else None
        except Exception as exc:
            raise DatasetError(f"{shown}: attribute '{name}' cannot be read "
                               f"({_one_line(exc)})") from None

    with f:
        _check_keys(f, fail, step)
        class_names = _check_attributes(shown, attr)
        n, c, h, w, maps = _check_shapes(f, fail, step)
        # Shapes are consistent: now make sure loading the file cannot exhaust memory, before
        # reading anything of size N.
        if check_memory:
            step("key 'images' (memory needed)")
            needed, avail = declared_bytes(f), available_memory()
            if avail is not None and needed > avail:
                raise fail("images", f"the file declares {n} images of {c}x{h}x{w} px; loading "
                                     f"them with their maps needs {_gib(needed)} of memory but "
                                     f"only {_gib(avail)} is available (mimic-runner holds a "
                                     "dataset in memory): prepare it at a smaller size or with "
                                     "fewer images")

        labels, split, split_counts = _check_values(f, shown, fail, step, class_names, n, maps,
                                                    require_splits, deep)
        class_counts = {
            name: {cn: int(((split == i) & (labels == k)).sum())
                   for k, cn in enumerate(class_names)}
            for i, name in enumerate(SPLITS)
        }
        attrs = _other_attributes(f, attr, step)
    return DatasetInfo(path=p, n=n, channels=c, height=h, width=w, class_names=class_names,
                       maps=maps, split_counts=split_counts, class_counts=class_counts, attrs=attrs)


def _check_keys(f: h5py.File, fail: Fail, step: Progress) -> None:
    """Every required key present, every key an array stored in the file (no links)."""
    for key in (*REQUIRED_KEYS, *MAP_KEYS):
        step(f"key '{key}'")
        problem = _link_problem(f, key)
        if problem:
            raise fail(key, problem)
        if key not in f:
            if key in MAP_KEYS:
                continue
            try:
                present = _text(", ".join(sorted(f.keys()))) or "none"
            except Exception:
                present = "unreadable"
            raise fail(key, f"missing (the file has: {present}); see the schema in README")
        obj = f[key]
        if not isinstance(obj, h5py.Dataset):
            kind = "a group" if isinstance(obj, h5py.Group) else f"a {type(obj).__name__}"
            raise fail(key, f"is {kind}; expected an array (see the schema in README)")


def _check_attributes(shown: Path, attr: Attr) -> list[str]:
    """``schema_version`` this version reads; ``class_names`` a list of 2+ distinct strings."""
    version = attr("schema_version")
    if version is None:
        raise DatasetError(f"{shown}: attribute 'schema_version' missing")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DatasetError(f"{shown}: attribute 'schema_version' is {version!r:.60} "
                           f"({type(version).__name__}); expected the integer "
                           f"{SCHEMA_VERSION} (write it as f.attrs['schema_version'] = "
                           f"{SCHEMA_VERSION})")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{shown}: attribute 'schema_version' is {version}, this version "
                           f"of mimic-runner reads {SCHEMA_VERSION}")
    class_names = attr("class_names")
    if class_names is None:
        raise DatasetError(f"{shown}: attribute 'class_names' missing")
    if isinstance(class_names, str):
        # A plain string would otherwise be read as one class per character.
        raise DatasetError(f"{shown}: attribute 'class_names' is the single string "
                           f"{class_names[:40]!r}; store one string per class, e.g. "
                           "f.attrs['class_names'] = ['Normal', 'CHF']")
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        raise DatasetError(f"{shown}: attribute 'class_names' is {class_names!r:.60}; "
                           "expected a list of strings, one per class")
    if len(class_names) < 2:
        raise DatasetError(f"{shown}: attribute 'class_names' must name at least 2 classes")
    if len(set(class_names)) != len(class_names):
        raise DatasetError(f"{shown}: attribute 'class_names' repeats a name: "
                           f"{class_names!r:.200}")

    return class_names


def _check_shapes(f: h5py.File, fail: Fail, step: Progress
                  ) -> tuple[int, int, int, int, list[str]]:
    """Dtypes and shapes of every array against ``images`` (N, C, H, W): (N, C, H, W, maps)."""
    step("key 'images'")
    images = f["images"]
    if images.dtype != np.uint8:
        raise fail("images", f"dtype {images.dtype}, expected uint8")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise fail("images", f"shape {images.shape}, expected (N, C, H, W) with C = 1 or 3")
    n, c, h, w = images.shape
    if n == 0:
        raise fail("images", "holds no images")
    if min(h, w) < MIN_IMAGE_SIDE:
        raise fail("images", f"images are {h}x{w} px; mimic-runner needs at least "
                             f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} (every backbone downsamples "
                             "by 8 or more): prepare the data at a larger size")
    for key, dtype, shape in (("labels", np.int64, (n,)), ("split", np.uint8, (n,)),
                              ("ids", None, (n,))):
        step(f"key '{key}'")
        ds = f[key]
        if ds.shape != shape:
            raise fail(key, f"shape {ds.shape}, expected {shape} (N = {n} from 'images')")
        if dtype is not None and ds.dtype != dtype:
            raise fail(key, f"dtype {ds.dtype}, expected {np.dtype(dtype)}")
    if h5py.check_string_dtype(f["ids"].dtype) is None:
        raise fail("ids", f"dtype {f['ids'].dtype}, expected utf-8 strings")
    maps = []
    for key, dtype in MAP_DTYPES.items():
        step(f"key '{key}'")
        if key not in f:
            continue
        ds = f[key]
        if ds.shape != (n, h, w):
            raise fail(key, f"shape {ds.shape}, expected {(n, h, w)} to match 'images'")
        if ds.dtype != dtype:
            raise fail(key, f"dtype {ds.dtype}, expected {np.dtype(dtype)}")
        maps.append(key)
    return n, c, h, w, maps


def _check_values(f: h5py.File, shown: Path, fail: Fail, step: Progress, class_names: list[str],
                  n: int, maps: list[str], require_splits: tuple[str, ...], deep: bool
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Labels in range, split codes valid and required splits non-empty, ids unique UTF-8,
    gaze finite and non-negative; with ``deep`` every array read. (labels, split, counts)."""
    step("key 'labels'")
    labels = _read(f["labels"], (), shown, "labels")
    bad = (labels < 0) | (labels >= len(class_names))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise fail("labels", f"label {int(labels[i])} at row {i} is out of range "
                             f"0..{len(class_names) - 1} ({len(class_names)} class_names)")
    step("key 'split'")
    split = _read(f["split"], (), shown, "split")
    if not np.isin(split, (0, 1, 2)).all():
        i = int(np.flatnonzero(~np.isin(split, (0, 1, 2)))[0])
        raise fail("split",
                   f"value {int(split[i])} at row {i}; expected 0 train, 1 val, 2 test")
    split_counts = {name: int((split == i).sum()) for i, name in enumerate(SPLITS)}
    for name in require_splits:
        if split_counts[name] == 0:
            raise fail("split", f"the '{name}' split is empty; assign some images to it")
    ids = _read_ids(f["ids"], shown, step)
    if len(set(ids.tolist())) != n:
        raise fail("ids", "ids are not unique")

    if "gaze" in maps:
        ds = f["gaze"]
        rows = _rows_per_block(ds)
        for start in range(0, n, rows):
            step(f"key 'gaze' (rows from {start})")
            block = _read(ds, slice(start, start + rows), shown, "gaze")
            if not np.isfinite(block).all():
                i = start + int(np.flatnonzero(~np.isfinite(block).all(axis=(1, 2)))[0])
                raise fail("gaze", f"NaN or Inf at row {i} (id {_text(ids[i])})")
            if (block < 0).any():
                i = start + int(np.flatnonzero((block < 0).any(axis=(1, 2)))[0])
                raise fail("gaze", f"negative values at row {i} (id {_text(ids[i])}); "
                                   "gaze must be non-negative")
    if deep:
        for key in ("images", *[m for m in maps if m != "gaze"]):
            ds = f[key]
            rows = _rows_per_block(ds)
            for start in range(0, n, rows):
                step(f"key '{key}' (rows from {start})")
                _read(ds, slice(start, start + rows), shown, key)

    return labels, split, split_counts


def _other_attributes(f: h5py.File, attr: Attr, step: Progress) -> dict[str, object]:
    """The informative attributes as plain values; never fatal."""
    attrs: dict[str, object] = {}
    step("attributes")
    try:
        names = list(f.attrs)
    except Exception:
        names = []
        attrs["<attributes>"] = "<unreadable>"
    for k in names:  # other attributes are informative only: never fatal
        try:
            attrs[k] = _plain(attr(k))
        except DatasetError:
            attrs[k] = "<unreadable>"
    return attrs


def validate_dataset(
    path: str | os.PathLike[str],
    require_splits: Sequence[str] = SPLITS,
    display_path: str | os.PathLike[str] | None = None,
    *,
    check_memory: bool = True,
    deep: bool = False,
    bounded: bool = True,
) -> DatasetInfo:
    """Check a file against the schema and return a :class:`DatasetInfo`.

    ``require_splits`` names the splits that must hold at least one image. ``check_memory``
    refuses a file whose arrays would not fit in the memory available (the runner loads a
    dataset whole). ``deep`` also reads every array in bounded blocks, so that a damaged
    chunk is reported now rather than when training starts.

    A path that is not a regular file (FIFO, device, socket, folder) is refused before it is
    opened; soft and external links in place of a key are refused, not followed. With
    ``bounded`` (the default) the file is read in a child process that must keep making progress
    (:func:`mimic_runner.data.watchdog.run_bounded`): libhdf5 can loop for ever, or crash, on a
    damaged file; either becomes a :class:`DatasetError`. Every problem is one
    :class:`DatasetError` line naming the file and the key or attribute.
    """
    p = Path(path)
    shown = Path(display_path) if display_path is not None else p
    _check_file(p, shown)
    args = (p, shown, tuple(require_splits), check_memory, deep)
    if not bounded:
        return _validate(*args)
    from mimic_runner.data.watchdog import run_bounded

    return run_bounded(_validate, *args, what=str(shown))

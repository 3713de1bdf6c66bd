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
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mimic_runner.errors import DatasetError, UserError, no_room
from mimic_runner.io import (
    atomic_path,
    check_output_dir,
    check_path_length,
    file_kind,
    hdf5_image,
    refuse_non_regular_output,
)

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
REQUIRED_KEYS = ("images", "labels", "split", "ids")
# Optional per-pixel maps, in the order they are listed and loaded, with their dtypes.
MAP_DTYPES: dict[str, type] = {"gaze": np.float32, "fixations": np.bool_,
                               "confounder": np.bool_, "finding": np.bool_}
MAP_KEYS = tuple(MAP_DTYPES)
# Smallest image side accepted. Every backbone downsamples by at least 8 (the small CNN by 8,
# ResNet/DenseNet/EfficientNet by 32), so anything smaller leaves no spatial map to explain.
MIN_IMAGE_SIDE = 8
_BLOCK_BYTES = 64 << 20  # validation reads at most about this much at a time
_ID_BYTES = 64  # rough in-memory cost of one id string, for the memory estimate
Progress = Callable[[str], None]  # told the step about to be read (the key or attribute)


@dataclass
class DatasetInfo:
    """What :func:`validate_dataset` learned about a file."""

    path: Path
    n: int
    channels: int
    height: int
    width: int
    class_names: list[str]
    maps: list[str]
    split_counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]  # split -> class -> count
    attrs: dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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

        class_counts = {
            name: {cn: int(((split == i) & (labels == k)).sum())
                   for k, cn in enumerate(class_names)}
            for i, name in enumerate(SPLITS)
        }
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
    return DatasetInfo(path=p, n=n, channels=c, height=h, width=w, class_names=class_names,
                       maps=maps, split_counts=split_counts, class_counts=class_counts, attrs=attrs)


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

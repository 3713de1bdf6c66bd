"""The HDF5 dataset schema (see DESIGN.md): writer, validator and reader.

| key          | dtype, shape              | meaning                                   |
| ------------ | ------------------------- | ----------------------------------------- |
| `images`     | uint8 (N, C, H, W)        | C = 1 (grey) or 3 (RGB)                   |
| `labels`     | int64 (N,)                | index into `attrs["class_names"]`         |
| `split`      | uint8 (N,)                | 0 train, 1 val, 2 test                    |
| `ids`        | utf-8 str (N,)            | stable image ids                          |
| `gaze`       | float32 (N, H, W), opt.   | human attention heatmap, non-negative     |
| `fixations`  | bool (N, H, W), opt.      | pixels holding at least one fixation      |
| `confounder` | bool (N, H, W), opt.      | where a known shortcut artefact lies      |

Attributes: `class_names`, `schema_version`, `source`, `aligned`.
Every problem is raised as :class:`~mimic_runner.errors.DatasetError` naming the file, the key
and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mimic_runner.errors import DatasetError
from mimic_runner.io import atomic_path

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
REQUIRED_KEYS = ("images", "labels", "split", "ids")
MAP_KEYS = ("gaze", "fixations", "confounder")
_CHUNK = 256  # rows read at a time while validating, to bound memory on big files


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
    source: str = "",
    aligned: bool = True,
    overwrite: bool = False,
    extra_attrs: dict[str, object] | None = None,
) -> Path:
    """Write a dataset atomically (temporary file, validated, then renamed) and return its path."""
    final = Path(path)
    with atomic_path(final, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            chunks = (1, *images.shape[1:])
            f.create_dataset("images", data=np.asarray(images, dtype=np.uint8), chunks=chunks)
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
            f.create_dataset("split", data=np.asarray(split, dtype=np.uint8))
            f.create_dataset("ids", data=np.asarray([str(i) for i in ids], dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
            for key, arr, dtype in (("gaze", gaze, np.float32), ("fixations", fixations, bool),
                                    ("confounder", confounder, bool)):
                if arr is not None:
                    f.create_dataset(key, data=np.asarray(arr, dtype=dtype),
                                     chunks=(1, *arr.shape[1:]), compression="gzip",
                                     compression_opts=1)
            f.attrs["class_names"] = np.asarray(list(class_names), dtype=object)
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["source"] = source
            f.attrs["aligned"] = bool(aligned)
            for k, v in (extra_attrs or {}).items():
                f.attrs[k] = v
        validate_dataset(tmp, require_splits=(), display_path=final)
    return final


def _decode(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def validate_dataset(
    path: str | os.PathLike[str],
    require_splits: Sequence[str] = SPLITS,
    display_path: str | os.PathLike[str] | None = None,
) -> DatasetInfo:
    """Check a file against the schema and return a :class:`DatasetInfo`.

    ``require_splits`` names the splits that must hold at least one image.
    """
    p = Path(path)
    shown = Path(display_path) if display_path is not None else p
    if not p.exists():
        raise DatasetError(f"{shown}: no such dataset file; create it with `mimic-data synth-cxr "
                           f"--out {shown}` or `mimic-data prepare ...`")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise DatasetError(f"{shown}: not a readable HDF5 file ({exc})") from None

    def fail(key: str, problem: str) -> DatasetError:
        return DatasetError(f"{shown}: key '{key}': {problem}")

    with f:
        for key in REQUIRED_KEYS:
            if key not in f:
                return_keys = ", ".join(sorted(f.keys())) or "none"
                raise fail(key, f"missing (the file has: {return_keys}); see the schema in README")
        version = _decode(f.attrs.get("schema_version", None))
        if version is None:
            raise DatasetError(f"{shown}: attribute 'schema_version' missing")
        if int(version) != SCHEMA_VERSION:  # type: ignore[arg-type]
            raise DatasetError(f"{shown}: attribute 'schema_version' is {version}, this version "
                               f"of mimic-runner reads {SCHEMA_VERSION}")
        if "class_names" not in f.attrs:
            raise DatasetError(f"{shown}: attribute 'class_names' missing")
        class_names = [str(c) for c in _decode(f.attrs["class_names"])]  # type: ignore[union-attr]
        if len(class_names) < 2:
            raise DatasetError(f"{shown}: attribute 'class_names' must name at least 2 classes")

        images = f["images"]
        if images.dtype != np.uint8:
            raise fail("images", f"dtype {images.dtype}, expected uint8")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise fail("images", f"shape {images.shape}, expected (N, C, H, W) with C = 1 or 3")
        n, c, h, w = images.shape
        if n == 0:
            raise fail("images", "holds no images")
        for key, dtype, shape in (("labels", np.int64, (n,)), ("split", np.uint8, (n,)),
                                  ("ids", None, (n,))):
            ds = f[key]
            if ds.shape != shape:
                raise fail(key, f"shape {ds.shape}, expected {shape} (N = {n} from 'images')")
            if dtype is not None and ds.dtype != dtype:
                raise fail(key, f"dtype {ds.dtype}, expected {np.dtype(dtype)}")
        if h5py.check_string_dtype(f["ids"].dtype) is None:
            raise fail("ids", f"dtype {f['ids'].dtype}, expected utf-8 strings")
        labels = f["labels"][()]
        bad = (labels < 0) | (labels >= len(class_names))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise fail("labels", f"label {int(labels[i])} at row {i} is out of range "
                                 f"0..{len(class_names) - 1} ({len(class_names)} class_names)")
        split = f["split"][()]
        if not np.isin(split, (0, 1, 2)).all():
            i = int(np.flatnonzero(~np.isin(split, (0, 1, 2)))[0])
            raise fail("split",
                       f"value {int(split[i])} at row {i}; expected 0 train, 1 val, 2 test")
        split_counts = {name: int((split == i).sum()) for i, name in enumerate(SPLITS)}
        for name in require_splits:
            if split_counts[name] == 0:
                raise fail("split", f"the '{name}' split is empty; assign some images to it")
        ids = f["ids"].asstr()[()]
        if len(set(ids.tolist())) != n:
            raise fail("ids", "ids are not unique")

        maps = []
        for key, dtype in (("gaze", np.float32), ("fixations", np.bool_),
                           ("confounder", np.bool_)):
            if key not in f:
                continue
            ds = f[key]
            if ds.shape != (n, h, w):
                raise fail(key, f"shape {ds.shape}, expected {(n, h, w)} to match 'images'")
            if ds.dtype != dtype:
                raise fail(key, f"dtype {ds.dtype}, expected {np.dtype(dtype)}")
            if key == "gaze":
                for start in range(0, n, _CHUNK):
                    block = ds[start:start + _CHUNK]
                    if not np.isfinite(block).all():
                        i = start + int(np.flatnonzero(~np.isfinite(block).all(axis=(1, 2)))[0])
                        raise fail(key, f"NaN or Inf at row {i} (id {ids[i]})")
                    if (block < 0).any():
                        i = start + int(np.flatnonzero((block < 0).any(axis=(1, 2)))[0])
                        raise fail(key, f"negative values at row {i} (id {ids[i]}); gaze must "
                                        "be non-negative")
            maps.append(key)

        class_counts = {
            name: {cn: int(((split == i) & (labels == k)).sum())
                   for k, cn in enumerate(class_names)}
            for i, name in enumerate(SPLITS)
        }
        attrs = {k: _decode(v) for k, v in f.attrs.items()}
    return DatasetInfo(path=p, n=n, channels=c, height=h, width=w, class_names=class_names,
                       maps=maps, split_counts=split_counts, class_counts=class_counts, attrs=attrs)


def read_dataset(
    path: str | os.PathLike[str],
    split: str | None = None,
    keys: Sequence[str] | None = None,
    require_splits: Sequence[str] = SPLITS,
) -> tuple[dict[str, np.ndarray], DatasetInfo]:
    """Validate and load a dataset into memory.

    Returns ``(arrays, info)``; ``arrays`` holds ``images``, ``labels``, ``split``, ``ids`` and the
    optional maps present (or only ``keys``), restricted to ``split`` when given.
    """
    info = validate_dataset(path, require_splits=require_splits)
    wanted = list(keys) if keys is not None else [*REQUIRED_KEYS, *info.maps]
    with h5py.File(info.path, "r") as f:
        sel = slice(None)
        if split is not None:
            if split not in SPLITS:
                raise DatasetError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
            mask = f["split"][()] == SPLITS.index(split)
            if not mask.any():
                raise DatasetError(f"{info.path}: the '{split}' split is empty")
            sel = np.flatnonzero(mask)
        out: dict[str, np.ndarray] = {}
        for key in wanted:
            if key not in f:
                raise DatasetError(f"{info.path}: key '{key}': missing")
            ds = f[key].asstr() if key == "ids" else f[key]
            out[key] = ds[()][sel] if isinstance(sel, np.ndarray) else ds[()]
    return out, info

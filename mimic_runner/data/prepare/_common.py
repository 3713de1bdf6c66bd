"""Shared pieces of the preparers: CSV reading, image decoding, resize/letterbox, splits, reports.

Every user mistake is raised as :class:`~mimic_runner.errors.DatasetError` with one line that
names the file and the problem; rows left out for a reason are collected in a
:class:`SkipLog` and reported, never dropped silently.
"""

from __future__ import annotations

import csv
import errno
import math
import os
import stat
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from mimic_runner.data.schema import check_output_file
from mimic_runner.errors import DatasetError, UserError
from mimic_runner.io import check_path_length, file_kind

T = TypeVar("T")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MODES = ("resize", "pad")
SPLIT_NAMES = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2, "0": 0, "1": 1, "2": 2}


# --------------------------------------------------------------------------- reports


@dataclass
class SkipLog:
    """Rows left out, grouped by reason, so that the CLI can report them (count + first ids)."""

    by_reason: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, item: str) -> None:
        self.by_reason.setdefault(reason, []).append(str(item))

    def note(self, text: str) -> None:
        """Record something worth telling the user that is not a skipped row."""
        self.notes.append(text)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_reason.values())

    def lines(self, show: int = 5) -> list[str]:
        """One line per note and per skip reason, naming the first ``show`` ids."""
        out = list(self.notes)
        for reason, items in self.by_reason.items():
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            out.append(f"skipped {len(items)} ({reason}): {', '.join(items[:show])}{more}")
        return out


@dataclass
class PrepareResult:
    """What a preparer wrote, for the CLI to print."""

    path: Path
    n: int
    split_counts: dict[str, int]
    class_names: list[str]
    log: SkipLog

    def summary(self) -> list[str]:
        counts = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        lines = [f"wrote {self.path}: {self.n} images ({counts}); classes: "
                 f"{', '.join(self.class_names)}"]
        lines += self.log.lines()
        empty = [k for k, v in self.split_counts.items() if v == 0]
        if empty:
            lines.append(f"warning: empty split(s): {', '.join(empty)}; mimic-run needs train, "
                         "val and test")
        return lines


def split_counts(split: np.ndarray) -> dict[str, int]:
    return {name: int((split == i).sum()) for i, name in enumerate(("train", "val", "test"))}


def track(items: Iterable[T], total: int, description: str,
          enabled: bool | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (only on a terminal unless ``enabled``)."""
    from mimic_runner.log import console, progress_bar

    show = console.is_terminal if enabled is None else enabled
    with progress_bar(remaining=True, disable=not show) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


# --------------------------------------------------------------------------- argument checks


def check_output(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """Fail early (before any work) when ``out`` exists and ``overwrite`` is false, is a
    directory, or lies in a folder that cannot be written."""
    return check_output_file(out, overwrite)


def check_fractions(val: float, test: float) -> None:
    """Validation and test fractions must be in [0, 1) and leave room for training images."""
    for name, v in (("--val", val), ("--test", test)):
        if not 0.0 <= v < 1.0 or math.isnan(v):
            raise UserError(f"{name} {v}: a fraction must be in [0, 1)")
    if val + test >= 1.0:
        raise UserError(f"--val {val} + --test {test} = {val + test:g} leaves no training images; "
                        "their sum must be below 1")


def check_size(size: int) -> None:
    if size < 8:
        raise UserError(f"--size {size}: images must be at least 8 pixels wide")


def check_dir(path: str | os.PathLike[str], what: str) -> Path:
    p = check_path_length(path, what)
    if not p.is_dir():
        raise DatasetError(f"{p}: {what} not found (no such directory)")
    return p


# --------------------------------------------------------------------------- CSV


def csv_rows(path: Path, required: Sequence[str], optional: Sequence[str] = (),
             hint: str = "") -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, {column: value})`` for the ``required`` and ``optional`` columns.

    Header names are stripped and matched exactly, then case-insensitively; empty and
    ``Unnamed: N`` padding columns and any extra columns are ignored. Blank rows are skipped.
    Raises :class:`DatasetError` naming the file when it is missing, unreadable or lacks a
    required column (all missing ones are named).
    """
    try:  # a FIFO would block the reader, a device never end: refused before opening
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DatasetError(f"{path}: no such file{hint}") from None
        raise DatasetError(f"{str(path)[:100]}: cannot read CSV ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{path}: is {file_kind(mode)}, not a regular file; give a CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: empty file; expected a CSV header row")
            names = [h.strip() for h in header]
            exact = {n: i for i, n in reversed(list(enumerate(names)))
                     if n and not n.startswith("Unnamed:")}
            lower = {n.lower(): i for n, i in reversed(list(exact.items()))}
            cols: dict[str, int] = {}
            for name in (*required, *optional):
                idx = exact.get(name, lower.get(name.lower()))
                if idx is not None:
                    cols[name] = idx
            missing = [n for n in required if n not in cols]
            if missing:
                found = ", ".join(n for n in exact) or "none"
                raise DatasetError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                                   f"(found: {found})")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                yield reader.line_num, {n: (row[i].strip() if i < len(row) else "")
                                        for n, i in cols.items()}
    except DatasetError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({type(exc).__name__}: {exc})") from None


def parse_float(value: str, path: Path, line: int, column: str) -> float:
    """A number from a CSV cell, or a :class:`DatasetError` naming file, line and column."""
    try:
        out = float(value)
    except ValueError:
        raise DatasetError(f"{path}:{line}: column '{column}' holds {value!r}, expected a "
                           "number") from None
    if not math.isfinite(out):
        raise DatasetError(f"{path}:{line}: column '{column}' holds {value!r}, expected a "
                           "finite number")
    return out


# --------------------------------------------------------------------------- images


def open_image(path: Path) -> Image.Image:
    """Open an image lazily (header only); a file PIL cannot identify is a :class:`DatasetError`."""
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert to 8-bit grey ('L') or 'RGB'; 16-bit and float images are scaled by their max."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        arr = arr / top * 255.0 if top > 0 else np.zeros_like(arr)  # as the EGD code: img / max
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img.convert("L" if channels == 1 else "RGB")


def decode(path: Path, channels: int) -> Image.Image:
    """Fully decode an image as grey (``channels=1``) or RGB; broken files name the file."""
    img = open_image(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        return _to_mode(img, channels)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class Fit:
    """How a ``src_w`` x ``src_h`` image becomes a ``size`` x ``size`` one.

    ``resize`` stretches it to the square (the aspect ratio may change; what the EGD code does);
    ``pad`` letterboxes it: the longer side is scaled to ``size``, the aspect ratio is kept and
    the rest is filled with zeros, centred. Points and maps go through the same transform, with
    PIL's pixel-centre convention: source pixel ``x`` (centre ``x + 0.5``) lands in target column
    ``floor((x + 0.5) * new_w / src_w) + off_x``.
    """

    src_w: int
    src_h: int
    size: int
    mode: str = "resize"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--mode {self.mode}: use one of {', '.join(MODES)}")
        if self.src_w < 1 or self.src_h < 1:
            raise DatasetError(f"empty image ({self.src_w}x{self.src_h} px)")

    @property
    def new_w(self) -> int:
        if self.mode == "resize":
            return self.size
        return max(1, round(self.src_w * self.size / max(self.src_w, self.src_h)))

    @property
    def new_h(self) -> int:
        if self.mode == "resize":
            return self.size
        return max(1, round(self.src_h * self.size / max(self.src_w, self.src_h)))

    @property
    def off_x(self) -> int:
        return (self.size - self.new_w) // 2

    @property
    def off_y(self) -> int:
        return (self.size - self.new_h) // 2

    def image(self, img: Image.Image) -> np.ndarray:
        """Resize/letterbox a decoded PIL image; returns uint8 (C, size, size)."""
        if img.size != (self.src_w, self.src_h):
            raise ValueError(f"Fit for {self.src_w}x{self.src_h} applied to {img.size}")
        small = img.resize((self.new_w, self.new_h), Image.Resampling.BILINEAR)
        arr = np.asarray(small, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return self._place(arr, np.uint8)

    def float_map(self, arr: np.ndarray) -> np.ndarray:
        """Resize/letterbox a float map (H, W) bilinearly; returns float32 (size, size)."""
        img = Image.fromarray(np.asarray(arr, dtype=np.float32), mode="F")
        small = np.asarray(img.resize((self.new_w, self.new_h), Image.Resampling.BILINEAR),
                           dtype=np.float32)
        return self._place(small[None], np.float32)[0]

    def _place(self, arr: np.ndarray, dtype: type) -> np.ndarray:
        if self.mode == "resize":
            return np.ascontiguousarray(arr, dtype=dtype)
        out = np.zeros((arr.shape[0], self.size, self.size), dtype=dtype)
        out[:, self.off_y:self.off_y + self.new_h, self.off_x:self.off_x + self.new_w] = arr
        return out

    def points(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map source pixel coordinates (x = column, y = row) to target ``(rows, cols)``."""
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        cols = np.floor((xs + 0.5) * self.new_w / self.src_w).astype(np.int64)
        rows = np.floor((ys + 0.5) * self.new_h / self.src_h).astype(np.int64)
        cols = np.clip(cols, 0, self.new_w - 1) + self.off_x
        rows = np.clip(rows, 0, self.new_h - 1) + self.off_y
        return rows, cols

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Map a bool mask pixel by pixel, so that no marked pixel vanishes when shrinking."""
        ys, xs = np.nonzero(mask)
        out = np.zeros((self.size, self.size), dtype=bool)
        rows, cols = self.points(xs, ys)
        out[rows, cols] = True
        return out

    def sigma(self, sigma_px: float) -> tuple[float, float]:
        """A Gaussian's (sigma_rows, sigma_cols) after the transform (anisotropic for resize)."""
        return sigma_px * self.new_h / self.src_h, sigma_px * self.new_w / self.src_w


def load_fitted(path: Path, channels: int, size: int, mode: str) -> tuple[np.ndarray, Fit]:
    """Decode ``path`` and resize/letterbox it: uint8 (C, size, size) and its :class:`Fit`."""
    img = decode(path, channels)
    fit = Fit(img.size[0], img.size[1], size, mode)
    return fit.image(img), fit


def is_grey(arr: np.ndarray) -> bool:
    """Whether an RGB array (3, H, W) holds the same value in every channel."""
    return bool((arr[0] == arr[1]).all() and (arr[1] == arr[2]).all())


def list_images(folder: Path, recursive: bool = True) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (sorted) and the other, ignored files (Thumbs.db, ...).

    Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) are ignored silently.
    """
    images: list[Path] = []
    other: list[Path] = []
    walker = folder.rglob("*") if recursive else folder.iterdir()
    for p in walker:
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else other).append(p)
    return sorted(images), sorted(other)


# --------------------------------------------------------------------------- splits


def grouped_split(groups: Sequence[str], val: float, test: float, seed: int) -> np.ndarray:
    """Assign whole groups (patients) to train/val/test; returns uint8 (N,) of 0/1/2.

    Deterministic: the sorted distinct groups are shuffled with ``seed``; each group in turn
    goes to test while test is short of ``test * N`` images, then to val likewise, else to train
    (a group joins a split only if that brings it nearer its target, except the split's first
    group). Every split with a non-zero fraction gets at least one group when there are enough
    groups. No group is in two splits.
    """
    check_fractions(val, test)
    n = len(groups)
    uniq, inverse, counts = np.unique(np.asarray(list(groups), dtype=str), return_inverse=True,
                                      return_counts=True)
    targets = {0: (1 - val - test) * n, 1: val * n, 2: test * n}
    active = [s for s in (0, 1, 2) if targets[s] > 0]
    if len(uniq) < len(active):
        raise DatasetError(f"only {len(uniq)} patient group(s) for {len(active)} splits; add "
                           "images or set --val 0 / --test 0")
    order = np.random.default_rng(seed).permutation(len(uniq))
    filled = {0: 0, 1: 0, 2: 0}
    assign = np.zeros(len(uniq), dtype=np.uint8)
    for i, g in enumerate(order):
        c = int(counts[g])
        dest = 0
        for s in (2, 1):
            if targets[s] > 0 and (filled[s] == 0 or filled[s] + c / 2 <= targets[s]):
                dest = s
                break
        # never leave more splits empty than there are groups left to fill them
        empty = [s for s in active if filled[s] == 0 and s != dest]
        if len(empty) > len(order) - i - 1:
            dest = max(empty, key=lambda s: targets[s])
        assign[g] = dest
        filled[dest] += c
    return assign[inverse.reshape(-1)]


def stratified_split_keep_train(labels: np.ndarray, val: float, test: float, seed: int,
                                ) -> np.ndarray:
    """Random split stratified by class: each class is shuffled (``seed``) and cut by fractions.

    A fraction of 0 leaves that split empty, and every class keeps at least one training image.
    Not the generators' :func:`mimic_runner.data._synth_common.stratified_split_nonempty`,
    which draws from a caller's generator and gives every class an image in every split.
    """
    check_fractions(val, test)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    split = np.zeros(len(labels), dtype=np.uint8)
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_test = round(test * len(idx))
        n_val = round(val * len(idx))
        if n_test + n_val >= len(idx):  # keep at least one training image per class
            n_test, n_val = min(n_test, len(idx) - 1), max(0, min(n_val, len(idx) - 1 - n_test))
        split[idx[:n_test]] = 2
        split[idx[n_test:n_test + n_val]] = 1
    return split

"""A generic class-per-folder tree: ``root/<class>/<name>.<png|jpg|...>`` (sub-folders allowed).

Optional parallel trees hold per-image maps under the same relative path and stem, any image
extension or ``.npy`` (``heatmaps/<class>/<name>.png``; a flat ``heatmaps/<name>.png`` is
accepted when no other map at the top of that folder has the same stem):

- ``--heatmaps`` -> ``gaze``: the map's values as float (grey PNG/TIFF or ``.npy``; must be
  finite and non-negative; colour images are refused, a colour-mapped heatmap is not a heatmap);
- ``--fixations`` -> ``fixations``: non-zero pixels are fixated; mapped pixel by pixel so no
  fixation vanishes when shrinking;
- ``--rois`` -> ``gaze`` too: 1 inside the region of interest (non-zero pixels), 0 outside,
  resized like a heatmap (so the model is asked to look inside the ROI); exclusive with
  ``--heatmaps``.

Maps may have a different size from their image but the same aspect ratio (within 2 %); they go
through the image's transform. An image without its map is skipped and reported. Ids are
``<class>/<relative path without extension>``. Classes are the sorted sub-folders of ``root``
(hidden ones, ``__MACOSX`` and the map folders excluded) or ``classes``, in that order. The
split is random and stratified by class, or read from a CSV with a ``split`` column
(train/val/test or 0/1/2) and an ``id`` (or ``path``/``file``) column matched against the ids,
longer paths ending in an id, or stems that name one image only; images it does not name are
skipped and reported.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimic_runner.data.prepare._common import (
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    Fit,
    PrepareResult,
    SkipLog,
    check_dir,
    check_fractions,
    check_output,
    check_size,
    csv_rows,
    is_grey,
    list_images,
    load_fitted,
    open_image,
    split_counts,
    stratified_split_keep_train,
    track,
)
from mimic_runner.data.schema import write_dataset
from mimic_runner.errors import DatasetError, UserError

MAP_SUFFIXES = (*IMAGE_EXTENSIONS, ".npy")
ID_COLUMNS = ("id", "path", "file", "filename", "image")
SOURCE = "folder"


# --------------------------------------------------------------------------- maps


class MapIndex:
    """Files of a parallel map tree, found by relative stem (``class/name``) or, for files at
    the top of the tree, by unique stem (a flat ``maps/<name>.png``)."""

    def __init__(self, root: Path, what: str) -> None:
        self.root = check_dir(root, f"{what} folder")
        self.what = what
        self.by_rel: dict[str, Path] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root)
            if (p.is_file() and p.suffix.lower() in MAP_SUFFIXES
                    and not any(s.startswith(".") for s in rel.parts)):
                self.by_rel.setdefault(rel.with_suffix("").as_posix(), p)
                if len(rel.parts) == 1:  # only a flat tree may match by stem alone
                    self.by_stem.setdefault(p.stem, []).append(p)

    def find(self, image_id: str, stem_is_unique: bool = True) -> Path | None:
        """The map of ``image_id``; by stem only if no other image has that stem either."""
        if image_id in self.by_rel:
            return self.by_rel[image_id]
        flat = self.by_stem.get(image_id.rsplit("/", 1)[-1], []) if stem_is_unique else []
        return flat[0] if len(flat) == 1 else None


def read_map(path: Path) -> np.ndarray:
    """A 2-D float map from a grey image or ``.npy``; refuses colour, NaN/Inf and negatives."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot read .npy map ({exc})") from None
        arr = np.squeeze(np.asarray(arr))
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise DatasetError(f"{path}: map has shape {arr.shape} and dtype {arr.dtype}; "
                               "expected a 2-D numeric array")
        arr = arr.astype(np.float64)
    else:
        img = open_image(path)
        try:
            img.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise DatasetError(f"{path}: cannot decode image ({type(exc).__name__}: "
                               f"{exc})") from None
        if img.mode in ("P", "1"):
            img = img.convert("L")
        arr = np.asarray(img, dtype=np.float64)
        if arr.ndim == 3:
            colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
            if not (colour == colour[..., :1]).all():
                raise DatasetError(f"{path}: map is a colour image; save maps as greyscale "
                                   "images or .npy arrays")
            arr = colour[..., 0]
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: map holds NaN or Inf")
    if (arr < 0).any():
        raise DatasetError(f"{path}: map holds negative values; maps must be non-negative")
    return arr


def _map_fit(arr: np.ndarray, map_path: Path, image_fit: Fit, image_path: Path) -> Fit:
    """The map's own transform; its aspect ratio must match the image's (within 2 %)."""
    h, w = arr.shape
    ratio, image_ratio = w / h, image_fit.src_w / image_fit.src_h
    if abs(ratio - image_ratio) > 0.02 * image_ratio:
        raise DatasetError(f"{map_path}: map is {w}x{h} px but its image {image_path} is "
                           f"{image_fit.src_w}x{image_fit.src_h} px (different aspect ratio)")
    return Fit(w, h, image_fit.size, image_fit.mode)


# --------------------------------------------------------------------------- split file


def _norm_key(value: str) -> str:
    key = value.strip().replace("\\", "/").removeprefix("./")
    if Path(key).suffix.lower() in IMAGE_EXTENSIONS:
        key = key[: -len(Path(key).suffix)]
    return key


def read_split_file(path: Path, ids: Sequence[str], log: SkipLog) -> dict[str, int]:
    """``id -> split`` (0/1/2) for the images in ``ids`` named by a split CSV."""
    by_id = set(ids)
    by_stem: dict[str, list[str]] = {}
    for i in ids:
        by_stem.setdefault(i.rsplit("/", 1)[-1], []).append(i)
    out: dict[str, int] = {}
    unknown: list[str] = []
    id_col = None
    for line, row in csv_rows(path, ("split",), optional=ID_COLUMNS):
        id_col = id_col or next((c for c in ID_COLUMNS if c in row), None)
        if id_col is None:
            raise DatasetError(f"{path}: missing column 'id' (or one of {', '.join(ID_COLUMNS)})")
        value = row["split"].lower()
        if value not in SPLIT_NAMES:
            raise DatasetError(f"{path}:{line}: split {row['split']!r}; use train, val or test "
                               "(or 0, 1, 2)")
        key = _norm_key(row[id_col])
        parts = key.split("/")
        match = next(("/".join(parts[j:]) for j in range(len(parts))
                      if "/".join(parts[j:]) in by_id), None)
        if match is None and len(by_stem.get(parts[-1], [])) == 1:
            match = by_stem[parts[-1]][0]
        if match is None:
            unknown.append(row[id_col])
            continue
        if match in out and out[match] != SPLIT_NAMES[value]:
            raise DatasetError(f"{path}:{line}: {row[id_col]!r} is given two different splits")
        out[match] = SPLIT_NAMES[value]
    if id_col is None:
        raise DatasetError(f"{path}: no rows; expected columns id,split")
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        log.note(f"{len(unknown)} id(s) of {path.name} match no image: "
                 f"{', '.join(unknown[:5])}{more}")
    return out


# --------------------------------------------------------------------------- preparer


def find_classes(root: Path, classes: Sequence[str] | None, exclude: Sequence[Path],
                 log: SkipLog) -> list[str]:
    """Class folder names: ``classes`` (checked) or the sorted visible sub-folders of ``root``."""
    excluded = {p.resolve() for p in exclude}
    # hidden folders and zip debris (__MACOSX) are not classes
    present = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith((".", "__"))
                     and p.resolve() not in excluded)
    if classes:
        missing = [c for c in classes if c not in present]
        if missing:
            raise DatasetError(f"{root}: class folder(s) {', '.join(map(repr, missing))} missing "
                               f"(found: {', '.join(present) or 'none'})")
        if len(set(classes)) != len(classes):
            raise UserError(f"--classes {','.join(classes)}: a class is named twice")
        ignored = [p for p in present if p not in classes]
        if ignored:
            log.note(f"ignored folder(s) not in --classes: {', '.join(ignored)}")
        present = list(classes)
    if len(present) < 2:
        raise DatasetError(f"{root}: found {len(present)} class folder(s) "
                           f"({', '.join(present) or 'none'}); expected root/<class>/<image> "
                           "with at least 2 classes")
    return present


def prepare_folder(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 224,
    mode: str = "resize",
    channels: int | None = None,
    heatmaps: str | os.PathLike[str] | None = None,
    fixations: str | os.PathLike[str] | None = None,
    rois: str | os.PathLike[str] | None = None,
    split_file: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    source: str = SOURCE,
    aligned: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> PrepareResult:
    """Build the HDF5 dataset from ``root/<class>/<image>`` plus optional map trees.

    ``channels`` None keeps 1 channel when every image is grey, else 3.
    """
    out_path = check_output(out, overwrite)
    check_fractions(val, test)
    check_size(size)
    if channels not in (None, 1, 3):
        raise UserError(f"--channels {channels}: use 1 or 3")
    if heatmaps is not None and rois is not None:
        raise UserError("--heatmaps and --rois both fill 'gaze'; give one of them")
    root_dir = check_dir(root, "image folder (--root)")
    log = SkipLog()
    maps = {key: MapIndex(Path(p), what) for key, p, what in
            (("heatmaps", heatmaps, "--heatmaps"), ("fixations", fixations, "--fixations"),
             ("rois", rois, "--rois")) if p is not None}
    class_names = find_classes(root_dir, classes, [m.root for m in maps.values()], log)

    items: list[tuple[str, Path, int]] = []
    seen: set[str] = set()
    for k, name in enumerate(class_names):
        folder = root_dir / name
        images, other = list_images(folder)
        if not images:
            raise DatasetError(f"{folder}: class folder holds no images "
                               f"({', '.join(IMAGE_EXTENSIONS)})")
        if other:
            log.note(f"ignored {len(other)} non-image file(s) in {folder} "
                     f"({', '.join(sorted({p.name for p in other})[:3])})")
        for p in images:
            image_id = f"{name}/{p.relative_to(folder).with_suffix('').as_posix()}"
            if image_id in seen:
                log.skip("same name, other extension", p.relative_to(root_dir).as_posix())
                continue
            seen.add(image_id)
            items.append((image_id, p, k))

    wanted: dict[str, int] | None = None
    if split_file is not None:
        wanted = read_split_file(Path(split_file), [i for i, _, _ in items], log)
        for image_id, _, _ in items:
            if image_id not in wanted:
                log.skip(f"not in {Path(split_file).name}", image_id)
        items = [it for it in items if it[0] in wanted]

    what_map = {"heatmaps": "no heatmap", "fixations": "no fixation mask", "rois": "no ROI mask"}
    n = len(items)
    load_channels = 1 if channels == 1 else 3
    imgs = np.zeros((n, load_channels, size, size), dtype=np.uint8)
    gaze = np.zeros((n if {"heatmaps", "rois"} & maps.keys() else 0, size, size), np.float32)
    fix = np.zeros((n if "fixations" in maps else 0, size, size), dtype=bool)
    kept: list[tuple[str, Path, int]] = []
    stems = Counter(i.rsplit("/", 1)[-1] for i, _, _ in items)
    for image_id, path, k in track(items, n, "folder", enabled=progress):
        unique = stems[image_id.rsplit("/", 1)[-1]] == 1
        found = {key: m.find(image_id, unique) for key, m in maps.items()}
        absent = [key for key, p in found.items() if p is None]
        if absent:
            log.skip(" and ".join(what_map[a] for a in absent), image_id)
            continue
        i = len(kept)
        imgs[i], fit = load_fitted(path, load_channels, size, mode)
        for key, map_path in found.items():
            assert map_path is not None
            arr = read_map(map_path)
            mfit = _map_fit(arr, map_path, fit, path)
            if key == "heatmaps":
                gaze[i] = np.maximum(mfit.float_map(arr), 0.0)
            elif key == "rois":
                gaze[i] = np.clip(mfit.float_map((arr > 0).astype(np.float32)), 0.0, 1.0)
            else:
                fix[i] = mfit.mask(arr > 0)
        kept.append((image_id, path, k))

    if not kept:
        raise DatasetError(f"{root_dir}: no usable image ({'; '.join(log.lines())})")
    m = len(kept)
    imgs = imgs[:m]
    if channels is None and all(is_grey(a) for a in imgs):
        imgs = imgs[:, :1]  # every image is grey: store one channel
    labels = np.asarray([k for _, _, k in kept], dtype=np.int64)
    if wanted is not None:
        split = np.asarray([wanted[i] for i, _, _ in kept], dtype=np.uint8)
    else:
        split = stratified_split_keep_train(labels, val, test, seed)
    write_dataset(out_path, images=imgs, labels=labels, split=split,
                  ids=[i for i, _, _ in kept], class_names=class_names,
                  gaze=gaze[:m] if len(gaze) else None, fixations=fix[:m] if len(fix) else None,
                  source=source, aligned=aligned, overwrite=overwrite,
                  extra_attrs={"prepare_mode": mode, "prepare_seed": seed,
                               "split_by": "split file" if wanted is not None else
                               "random, stratified by class"})
    return PrepareResult(out_path, m, split_counts(split), list(class_names), log)

"""NIH malaria cell images (Rajaraman et al. 2018): ``cell_images/{Parasitized,Uninfected}/*.png``.

27,558 RGB crops of varying size from thin blood smears of 200 patients. File names carry the
patient: ``C189P150ThinF_IMG_20151203_141809_cell_84.png`` -> ``C189P150`` (everything before
``ThinF``/``thinF``, without a trailing ``_``: ``C1_thinF_IMG_...`` -> ``C1``), so the split is by
that prefix and no patient's cells are in two splits. ``Thumbs.db`` and other non-image files
are ignored and counted. The Kaggle copy unpacks to ``cell_images/cell_images/...``, a nested
duplicate; only one copy is read and the other is reported as ignored. No gaze;
``aligned=False`` (cells are not at fixed positions).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from mimic_runner.data.prepare._common import (
    PrepareResult,
    SkipLog,
    check_dir,
    check_fractions,
    check_output,
    check_size,
    grouped_split,
    list_images,
    load_fitted,
    split_counts,
    track,
)
from mimic_runner.data.schema import write_dataset
from mimic_runner.errors import DatasetError

CLASS_NAMES = ("Parasitized", "Uninfected")
SOURCE = "nih-malaria"
_PATIENT = re.compile(r"^(?P<patient>.+?)_?thinf", re.IGNORECASE)


def patient_of(stem: str) -> str:
    """The patient prefix of a cell file name (see the module docstring); falls back to the part
    before the first ``_`` for names that do not follow the convention."""
    m = _PATIENT.match(stem)
    return m.group("patient") if m else stem.split("_", 1)[0]


def find_class_root(root: Path) -> tuple[Path, list[Path]]:
    """The folder holding ``Parasitized/`` and ``Uninfected/`` (``root``, ``root/cell_images`` or
    ``root/cell_images/cell_images``) and the other candidates that also hold them (duplicates)."""
    candidates = [root, root / "cell_images", root / "cell_images" / "cell_images"]
    found = [c for c in candidates if any((c / k).is_dir() for k in CLASS_NAMES)]
    if not found:
        raise DatasetError(f"{root}: no class folders {' and '.join(CLASS_NAMES)} here or in "
                           f"{root / 'cell_images'}; --root must be the unpacked cell_images "
                           "folder or its parent")
    return found[0], found[1:]


def prepare_malaria(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 128,
    mode: str = "resize",
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool | None = None,
) -> PrepareResult:
    """Build the HDF5 dataset (RGB cells resized or letterboxed to ``size``; split by patient)."""
    out_path = check_output(out, overwrite)
    check_fractions(val, test)
    check_size(size)
    base, duplicates = find_class_root(check_dir(root, "malaria folder (--root)"))
    log = SkipLog()
    for dup in duplicates:
        log.note(f"ignored nested duplicate {dup} (read {base} only)")

    files: list[tuple[Path, int]] = []
    for k, name in enumerate(CLASS_NAMES):
        folder = base / name
        if not folder.is_dir():
            raise DatasetError(f"{folder}: class folder missing (expected "
                               f"{' and '.join(CLASS_NAMES)} in {base})")
        images, other = list_images(folder, recursive=False)
        if not images:
            raise DatasetError(f"{folder}: class folder holds no images")
        if other:
            names = sorted({p.name for p in other})
            log.note(f"ignored {len(other)} non-image file(s) in {folder} "
                     f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
        files += [(p, k) for p in images]

    n = len(files)
    imgs = np.zeros((n, 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(track(files, n, "malaria", enabled=progress)):
        imgs[i], _fit = load_fitted(path, 3, size, mode)
    ids = [f"{CLASS_NAMES[k]}/{p.stem}" for p, k in files]
    patients = [patient_of(p.stem) for p, _ in files]
    split = grouped_split(patients, val, test, seed)
    labels = np.asarray([k for _, k in files], dtype=np.int64)
    write_dataset(out_path, images=imgs, labels=labels, split=split, ids=ids,
                  class_names=CLASS_NAMES, source=SOURCE, aligned=False, overwrite=overwrite,
                  extra_attrs={"prepare_mode": mode, "prepare_seed": seed,
                               "split_by": "patient prefix of the file name",
                               "n_patients": len(set(patients))})
    return PrepareResult(out_path, n, split_counts(split), list(CLASS_NAMES), log)

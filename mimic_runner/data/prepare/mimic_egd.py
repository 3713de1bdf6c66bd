"""MIMIC-EGD: the PhysioNet "Eye Gaze Data for Chest X-rays" release (Karargyris et al. 2021).

Inputs, as released (``egd-cxr/1.0.0``) plus the MIMIC-CXR-JPG images:

- ``master_sheet.csv``: one row per image with ``dicom_id``, ``path``
  (``files/p1x/p1xxxxxxx/sxxxxxxxx/<dicom_id>.dcm``, a MIMIC-CXR path), ``study_id``,
  ``patient_id`` and the one-hot labels ``Normal``, ``CHF``, ``pneumonia``, among ~60 other
  columns and some empty padding columns (ignored).
- ``fixations.csv``: one row per fixation with ``DICOM_ID``, ``X_ORIGINAL``, ``Y_ORIGINAL``
  (pixel coordinates in the full-resolution image) and others (``SESSION_ID``,
  ``Time (in secs)``, ``FPOGX``...), ignored.
- ``--images DIR``: MIMIC-CXR-JPG (the same tree with ``.jpg``); ``DIR`` may be the folder that
  holds ``files/`` or ``files/`` itself. PNG copies of the tree work too. DICOMs are not read.

Choices (see also the CLI help):

- Images are resized directly to ``size`` x ``size`` (``--mode resize``), as the EGD and
  learning-to-mimic code do; ``--mode pad`` letterboxes instead. Fixations are mapped with the
  same transform (:class:`~mimic_runner.data.prepare._common.Fit`), so a fixation at original
  pixel (x, y) of a W x H image lands at row ``floor((y + .5) * size / H)``, column
  ``floor((x + .5) * size / W)``.
- ``gaze`` = +1 per fixation, convolved with a Gaussian of ``sigma`` (150) original pixels,
  scaled by the same factors (anisotropic when the aspect ratio changes), as in the EGD paper's
  static heatmaps; its sum is about the number of fixations. ``fixations`` marks fixated pixels.
- Fixations the release marks as off-image (the EGD mapping writes negative ``X_ORIGINAL`` and
  ``Y_ORIGINAL`` when the gaze left the displayed image) are dropped and counted. A point one
  pixel past the right/bottom edge is clamped (the release mapped odd-sized images padded to an
  even size). Any other point outside the image is an error naming the CSV line, the dicom id
  and the coordinate — usually the images are not at their original resolution — unless
  ``outside="drop"``, which drops and reports such points.
- Fixation rows with a blank coordinate (the release's mapping leaves the cell empty when it
  failed) are dropped and counted; a non-numeric coordinate is an error.
- Rows without exactly one hot class, without patient id, without an image, or without any
  fixation left are skipped and reported. Splits are by ``patient_id``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from mimic_runner.data.prepare._common import (
    Fit,
    PrepareResult,
    SkipLog,
    check_dir,
    check_fractions,
    check_output,
    check_size,
    csv_rows,
    decode,
    grouped_split,
    open_image,
    parse_float,
    split_counts,
    track,
)
from mimic_runner.data.schema import write_dataset
from mimic_runner.errors import DatasetError, UserError

CLASS_NAMES = ("Normal", "CHF", "pneumonia")
MASTER_COLUMNS = ("dicom_id", "path", "patient_id", *CLASS_NAMES)
FIXATION_COLUMNS = ("DICOM_ID", "X_ORIGINAL", "Y_ORIGINAL")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
OUTSIDE = ("error", "drop")
SOURCE = "mimic-egd"


@dataclass
class _Case:
    dicom_id: str
    rel_path: str
    patient_id: str
    label: int


def read_master_sheet(path: Path, log: SkipLog) -> list[_Case]:
    """Cases from ``master_sheet.csv``; rows without one hot class or patient are logged."""
    cases: list[_Case] = []
    seen: set[str] = set()
    for line, row in csv_rows(path, MASTER_COLUMNS,
                              hint="; --egd must be the egd-cxr folder holding master_sheet.csv"):
        dicom_id = row["dicom_id"]
        if not dicom_id:
            log.skip("no dicom_id", f"{path.name}:{line}")
            continue
        if dicom_id in seen:
            log.skip("duplicate dicom_id", dicom_id)
            continue
        seen.add(dicom_id)
        hot = [parse_float(row[c] or "0", path, line, c) for c in CLASS_NAMES]
        if sorted(hot) != [0.0, 0.0, 1.0]:
            log.skip("not exactly one of Normal/CHF/pneumonia", dicom_id)
            continue
        if not row["patient_id"]:
            log.skip("no patient_id", dicom_id)
            continue
        cases.append(_Case(dicom_id, row["path"], row["patient_id"], hot.index(1.0)))
    return cases


Fixations = dict[str, list[tuple[int, float, float]]]


def read_fixations(path: Path, wanted: set[str]) -> tuple[Fixations, int, int]:
    """``DICOM_ID -> [(csv_line, x, y)]`` for the wanted ids, the count of other ids' rows and
    the count of rows with a blank coordinate (the release's mapping leaves a cell empty when it
    failed for that fixation)."""
    out: Fixations = {}
    other = blank = 0
    for line, row in csv_rows(path, FIXATION_COLUMNS,
                              hint="; --egd must be the egd-cxr folder holding fixations.csv"):
        dicom_id = row["DICOM_ID"]
        if dicom_id not in wanted:
            other += 1
            continue
        if not row["X_ORIGINAL"] or not row["Y_ORIGINAL"]:
            blank += 1
            continue
        x = parse_float(row["X_ORIGINAL"], path, line, "X_ORIGINAL")
        y = parse_float(row["Y_ORIGINAL"], path, line, "Y_ORIGINAL")
        out.setdefault(dicom_id, []).append((line, x, y))
    return out, other, blank


def find_image(images: Path, rel_path: str, dicom_id: str) -> Path | str:
    """The JPG/PNG for a master-sheet ``path`` under ``images`` (or ``images`` = ``files/``),
    or why there is none (a skip reason)."""
    rel = Path(rel_path) if rel_path else Path(dicom_id)
    stems = [rel.with_suffix("")]
    if rel.parts and rel.parts[0] == "files":
        stems.append(Path(*rel.parts[1:]).with_suffix(""))
    for stem in stems:
        for suffix in IMAGE_SUFFIXES:
            candidate = images / stem.with_name(stem.name + suffix)
            if candidate.is_file():
                return candidate
    if any((images / stem.with_name(stem.name + ".dcm")).is_file() for stem in stems):
        return "only a DICOM found; use MIMIC-CXR-JPG for --images"
    return "image not found (.jpg/.png)"


def check_fixations(points: list[tuple[int, float, float]], width: int, height: int, *,
                    dicom_id: str, fixations_csv: Path, image: Path, outside: str,
                    counts: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate one image's fixations against its size; returns the kept (xs, ys).

    Negative (x, y) pairs are the release's off-image marker: dropped, counted in
    ``counts["off_image"]``. A point within one pixel past the right/bottom edge is clamped.
    Other outside points raise :class:`DatasetError`, or are dropped and counted in
    ``counts["outside"]`` when ``outside == "drop"``.
    """
    xs: list[float] = []
    ys: list[float] = []
    for line, x, y in points:
        if x < 0 and y < 0:
            counts["off_image"] += 1
            continue
        if 0 <= x < width + 1 and 0 <= y < height + 1:
            xs.append(min(x, width - 1))
            ys.append(min(y, height - 1))
            continue
        if outside == "drop":
            counts["outside"] += 1
            continue
        raise DatasetError(
            f"{fixations_csv}:{line}: fixation (X_ORIGINAL={x:g}, Y_ORIGINAL={y:g}) of dicom_id "
            f"{dicom_id} lies outside its image {image} ({width}x{height} px); are the images at "
            "their original resolution? (--outside drop drops such points)")
    return np.asarray(xs), np.asarray(ys)


def gaze_maps(fit: Fit, xs: np.ndarray, ys: np.ndarray,
              sigma_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(gaze float32, fixations bool) at the target size for fixations at original pixels."""
    rows, cols = fit.points(xs, ys)
    counts = np.zeros((fit.size, fit.size), dtype=np.float64)
    np.add.at(counts, (rows, cols), 1.0)
    # reflect at the border, as scipy's default used by the EGD heatmap code
    gaze = gaussian_filter(counts, sigma=fit.sigma(sigma_px), mode="reflect")
    return np.maximum(gaze, 0.0).astype(np.float32), counts > 0


def prepare_mimic_egd(
    egd: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 224,
    mode: str = "resize",
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    sigma: float = 150.0,
    outside: str = "error",
    overwrite: bool = False,
    progress: bool | None = None,
) -> PrepareResult:
    """Build the HDF5 dataset (grey images, gaze, fixations; split by patient) from MIMIC-EGD."""
    out_path = check_output(out, overwrite)
    check_fractions(val, test)
    check_size(size)
    if outside not in OUTSIDE:
        raise UserError(f"--outside {outside}: use one of {', '.join(OUTSIDE)}")
    if not sigma > 0:
        raise UserError(f"--sigma {sigma}: must be positive")
    egd_dir = check_dir(egd, "EGD folder (--egd)")
    images_dir = check_dir(images, "MIMIC-CXR-JPG folder (--images)")
    master_csv = egd_dir / "master_sheet.csv"
    fixations_csv = egd_dir / "fixations.csv"

    log = SkipLog()
    cases = read_master_sheet(master_csv, log)
    fixations, other, blank = read_fixations(fixations_csv, {c.dicom_id for c in cases})
    if other:
        log.note(f"ignored {other} fixation rows whose DICOM_ID is not a kept row of "
                 "master_sheet.csv")
    if blank:
        log.note(f"dropped {blank} fixations with a blank X_ORIGINAL/Y_ORIGINAL")

    n = len(cases)
    imgs = np.zeros((n, 1, size, size), dtype=np.uint8)
    gaze = np.zeros((n, size, size), dtype=np.float32)
    fix = np.zeros((n, size, size), dtype=bool)
    kept: list[_Case] = []
    counts = {"off_image": 0, "outside": 0}
    for case in track(cases, n, "mimic-egd", enabled=progress):
        points = fixations.get(case.dicom_id)
        if not points:
            log.skip("no fixations in fixations.csv", case.dicom_id)
            continue
        path = find_image(images_dir, case.rel_path, case.dicom_id)
        if isinstance(path, str):
            log.skip(path, case.dicom_id)
            continue
        with open_image(path) as header:  # header only: check the points before decoding
            width, height = header.size
        xs, ys = check_fixations(points, width, height, dicom_id=case.dicom_id,
                                 fixations_csv=fixations_csv, image=path, outside=outside,
                                 counts=counts)
        if len(xs) == 0:
            log.skip("no fixation inside the image", case.dicom_id)
            continue
        img = decode(path, channels=1)
        fit = Fit(width, height, size, mode)
        i = len(kept)
        imgs[i] = fit.image(img)
        gaze[i], fix[i] = gaze_maps(fit, xs, ys, sigma)
        kept.append(case)

    if counts["off_image"]:
        log.note(f"dropped {counts['off_image']} fixations marked off-image (negative "
                 "X_ORIGINAL/Y_ORIGINAL) in fixations.csv")
    if counts["outside"]:
        log.note(f"dropped {counts['outside']} fixations outside their image (--outside drop)")
    if not kept:
        reasons = "; ".join(log.lines()) or "master_sheet.csv has no rows"
        raise DatasetError(f"{master_csv}: no usable image ({reasons})")
    k = len(kept)
    split = grouped_split([c.patient_id for c in kept], val, test, seed)
    labels = np.asarray([c.label for c in kept], dtype=np.int64)
    write_dataset(out_path, images=imgs[:k], labels=labels, split=split,
                  ids=[c.dicom_id for c in kept], class_names=CLASS_NAMES, gaze=gaze[:k],
                  fixations=fix[:k], source=SOURCE, aligned=True, overwrite=overwrite,
                  extra_attrs={"prepare_mode": mode, "prepare_seed": seed,
                               "gaze_sigma_px": float(sigma), "split_by": "patient_id"})
    return PrepareResult(out_path, k, split_counts(split), list(CLASS_NAMES), log)

"""Builders of small fixture trees in the real layouts of the prepared datasets, and a helper
that runs `mimic-data` in-process. Imported by tests/test_prepare_*.py (no conftest needed)."""

from __future__ import annotations

import csv
import inspect
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# ---------------------------------------------------------------------------- CLI helpers


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run `mimic-data ARGV` in-process; returns the exit code (0 when main returns)."""
    try:
        import mimic_runner.cli.data_synth  # noqa: F401
    except ModuleNotFoundError as exc:  # the synth sub-commands may not be written yet
        if exc.name != "mimic_runner.cli.data_synth":
            raise
        stub = types.ModuleType("mimic_runner.cli.data_synth")
        stub.add_synth_parsers = lambda sub: None  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "mimic_runner.cli.data_synth", stub)
    from mimic_runner.cli.data import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def assert_user_error(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch, *fragments: str) -> str:
    """The command exits 2 with one `error: ...` line holding every fragment, writing nothing."""
    capsys.readouterr()
    code = run_cli(argv, monkeypatch)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert "Traceback" not in err
    assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return err


def run_training(run: types.ModuleType, overrides: list[str], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `mimic-run OVERRIDES` in-process into tmp_path/runs and expect a metrics.json."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    argv = [*overrides, "trainer.accelerator=cpu", f"paths.runs_dir={tmp_path / 'runs'}",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    main = run.main
    if inspect.signature(main).parameters:
        main(argv)
    else:
        monkeypatch.setattr(sys, "argv", ["mimic-run", *argv])
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, f"mimic-run exited {exc.code}"
    assert list((tmp_path / "runs").rglob("metrics.json"))


def save_image(path: Path, width: int, height: int, seed: int, rgb: bool = False) -> Path:
    """A small random image (PNG or JPG by suffix)."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if rgb else (height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


# ---------------------------------------------------------------------------- MIMIC-EGD

# Column names as in egd-cxr 1.0.0 (a subset of the ~60), with the sheet's empty and
# "Unnamed" padding columns.
MASTER_HEADER = ["dicom_id", "path", "study_id", "patient_id", "stay_id", "gender", "anchor_age",
                 "image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad",
                 "Normal", "CHF", "pneumonia", "consolidation", "enlarged_cardiac_silhouette",
                 "Unnamed: 16", "", ""]
FIXATION_HEADER = ["SESSION_ID", "MEDIA_ID", "DICOM_ID", "CNT", "Time (in secs)",
                   "TIMETICK(f=10000000)", "FPOGX", "FPOGY", "FPOGS", "FPOGD", "FPOGID", "FPOGV",
                   "X_ORIGINAL", "Y_ORIGINAL"]


def dicom_id(i: int) -> str:
    return f"{i:08x}-5f1c2a3b-4d5e6f70-81928374-a5b6c7d8"


@dataclass
class EgdTree:
    egd: Path
    images: Path  # the MIMIC-CXR-JPG root (holds files/)
    big_id: str  # 1000x800 image with fixations at BIG_FIXATIONS
    patients: dict[str, str]  # dicom_id -> patient_id of every usable row
    skipped: dict[str, str] = field(default_factory=dict)  # dicom_id -> why
    image_paths: dict[str, Path] = field(default_factory=dict)


# original (x, y) -> expected (row, col) at 224: row = floor((y+.5)*224/800),
# col = floor((x+.5)*224/1000)
BIG_FIXATIONS = {(250, 600): (168, 56), (999, 799): (223, 223), (0, 0): (0, 0)}


def make_egd_tree(root: Path) -> EgdTree:
    """6 patients, 9 usable images (one 1000x800), and 3 rows that must be skipped."""
    egd = root / "egd-cxr" / "1.0.0"
    images = root / "mimic-cxr-jpg" / "2.0.0"
    rows: list[list[object]] = []
    fixations: list[list[object]] = []
    tree = EgdTree(egd, images, dicom_id(0), {})
    # (patient index, one-hot class or None for two hot, image size or None for no image,
    #  number of fixations)
    plan = [(0, 0, (1000, 800), -1), (0, 1, (120, 100), 3), (1, 1, (100, 120), 3),
            (2, 2, (90, 90), 2), (3, 0, (110, 90), 4), (3, 2, (100, 100), 3),
            (4, 1, (96, 128), 3), (5, 0, (128, 96), 2), (5, 2, (100, 80), 3),
            (1, None, (100, 100), 3),   # two hot classes -> skipped
            (2, 0, None, 3),            # no image on disk -> skipped
            (4, 2, (100, 100), 0)]      # no fixations -> skipped
    for i, (p, cls, size, n_fix) in enumerate(plan):
        did, pid, sid = dicom_id(i), f"1{p:07d}", f"5{i:07d}"
        rel = f"files/p{pid[:2]}/p{pid}/s{sid}/{did}.dcm"
        hot = [0, 0, 0]
        if cls is None:
            hot = [1, 1, 0]
        else:
            hot[cls] = 1
        rows.append([did, rel, sid, pid, 30000000 + i, "F", 50, 0, 0, 5, 5, *hot, 0, 0, "", "",
                     ""])
        if size is not None:
            ext = ".png" if i == 0 else ".jpg"  # the big one lossless: exact pixels
            path = images / rel.replace(".dcm", ext)
            tree.image_paths[did] = save_image(path, size[0], size[1], seed=i)
        if cls is None:
            tree.skipped[did] = "not exactly one"
        elif size is None:
            tree.skipped[did] = "image not found"
        elif n_fix == 0:
            tree.skipped[did] = "no fixations"
        else:
            tree.patients[did] = pid
        if i == 0:
            pts: list[tuple[float, float]] = [*BIG_FIXATIONS, (-2, -2)]  # + off-image marker
        else:
            w, h = size or (100, 100)
            rng = np.random.default_rng(100 + i)
            pts = [(float(rng.integers(0, w)), float(rng.integers(0, h))) for _ in range(n_fix)]
        for j, (x, y) in enumerate(pts):
            fixations.append([1, i, did, j + 1, 0.5 * j, 1000 * j, 0.5, 0.5, 0.1 * j, 0.2, j,
                              1, x, y])
    fixations.append([2, 99, "not-in-the-master-sheet", 1, 0.1, 10, 0.5, 0.5, 0.0, 0.2, 1, 1,
                      10, 10])
    write_csv(egd / "master_sheet.csv", MASTER_HEADER, rows)
    write_csv(egd / "fixations.csv", FIXATION_HEADER, fixations)
    return tree


# ---------------------------------------------------------------------------- malaria

MALARIA_PATIENTS = ["C189P150ThinF", "C39P4thinF", "C1_thinF", "C33P1thinF", "C100P61ThinF",
                    "C2NThinF"]


def malaria_patient(prefix: str) -> str:
    """What the preparer must call the patient of a file prefix (ThinF/thinF and '_' removed)."""
    return prefix[: prefix.lower().index("thinf")].rstrip("_")


def make_malaria_tree(root: Path, duplicate: bool = True) -> Path:
    """``root/cell_images/{Parasitized,Uninfected}`` with 2 cells per patient and class, varying
    sizes, Thumbs.db files, and (``duplicate``) the Kaggle nested copy
    ``cell_images/cell_images``. Returns the outer ``cell_images`` folder."""
    base = root / "cell_images"
    n = 0
    for cls in ("Parasitized", "Uninfected"):
        for p, prefix in enumerate(MALARIA_PATIENTS):
            for c in range(2):
                name = f"{prefix}_IMG_20151203_14180{p}_cell_{10 * c + p}.png"
                save_image(base / cls / name, 40 + 3 * c + p, 44 + 2 * p, seed=n, rgb=True)
                n += 1
        (base / cls / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
        if duplicate:
            dup = base / "cell_images" / cls
            dup.mkdir(parents=True, exist_ok=True)
            for f in sorted((base / cls).glob("*.png"))[:4]:
                (dup / f.name).write_bytes(f.read_bytes())
    return base


def n_malaria_cells() -> int:
    return 2 * 2 * len(MALARIA_PATIENTS)


# ---------------------------------------------------------------------------- folder


@dataclass
class FolderTree:
    root: Path
    heatmaps: Path
    fixations: Path
    rois: Path
    ids: list[str]


def make_folder_tree(root: Path, rgb: bool = False, per_class: int = 5) -> FolderTree:
    """``images/{benign,malignant}/<name>.png|jpg`` (one in a sub-folder) and parallel trees
    ``heatmaps/`` (grey PNG, some at half size, one .npy), ``fixations/`` (a single marked pixel
    at (x=10, y=20) of a 64x48 image) and ``rois/`` (a rectangle)."""
    images, heat, fix, rois = (root / n for n in ("images", "heatmaps", "fixations", "rois"))
    ids: list[str] = []
    n = 0
    for cls in ("benign", "malignant"):
        for i in range(per_class):
            rel = f"{cls}/case{i}" if i != per_class - 1 else f"{cls}/extra/case{i}"
            ext = ".jpg" if i == 1 else ".png"
            save_image(images / f"{rel}{ext}", 64, 48, seed=n, rgb=rgb)
            ids.append(rel)
            hm = np.zeros((48, 64), dtype=np.float32)
            hm[10:30, 20:40] = 1.0 + i
            hm_path = heat / f"{rel}.png"
            hm_path.parent.mkdir(parents=True, exist_ok=True)
            if i == 2:
                np.save(heat / f"{rel}.npy", hm)
            elif i == 3:  # half size, same aspect ratio
                Image.fromarray((hm[::2, ::2] * 40).astype(np.uint8)).save(hm_path)
            else:
                Image.fromarray((hm * 40).astype(np.uint8)).save(hm_path)
            mask = np.zeros((48, 64), dtype=np.uint8)
            mask[20, 10] = 255
            (fix / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(fix / f"{rel}.png")
            roi = np.zeros((48, 64), dtype=np.uint8)
            roi[5:25, 30:60] = 1
            (rois / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(roi).save(rois / f"{rel}.png")
            n += 1
        (images / cls / "Thumbs.db").write_bytes(b"junk")
    return FolderTree(images, heat, fix, rois, ids)

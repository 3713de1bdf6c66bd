"""`mimic-data prepare mimic-egd` on a small tree in the egd-cxr + MIMIC-CXR-JPG layout."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from fixtures_prepare import (
    BIG_FIXATIONS,
    FIXATION_HEADER,
    MASTER_HEADER,
    EgdTree,
    assert_user_error,
    make_egd_tree,
    run_cli,
    run_training,
    write_csv,
)

from mimic_runner.data.prepare._common import Fit, grouped_split
from mimic_runner.data.prepare.mimic_egd import gaze_maps
from mimic_runner.data.schema import read_dataset


@pytest.fixture
def tree(tmp_path: Path) -> EgdTree:
    return make_egd_tree(tmp_path / "src")


def _argv(tree: EgdTree, out: Path, *extra: str) -> list[str]:
    return ["prepare", "mimic-egd", "--egd", str(tree.egd), "--images", str(tree.images),
            "--out", str(out), "--val", "0.2", "--test", "0.2", *extra]


def test_prepare_mimic_egd(tree: EgdTree, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "egd.h5"
    assert run_cli(_argv(tree, out), monkeypatch) == 0
    report = capsys.readouterr().out
    # every skipped row is reported with its reason and id
    for did, why in tree.skipped.items():
        line = next(x for x in report.splitlines() if why in x)
        assert did in line
    assert "dropped 1 fixations marked off-image" in report
    assert "ignored 4 fixation rows" in report  # 3 of the two-hot row + 1 unknown id

    arrays, info = read_dataset(out, require_splits=())
    assert info.attrs["source"] == "mimic-egd" and info.attrs["aligned"] is True
    assert info.class_names == ["Normal", "CHF", "pneumonia"]
    assert (info.channels, info.height, info.width) == (1, 224, 224)
    assert sorted(info.maps) == ["fixations", "gaze"]
    ids = list(arrays["ids"])
    assert sorted(ids) == sorted(tree.patients)

    # a fixation at a known original pixel lands at the expected pixel of the resized map
    big = ids.index(tree.big_id)
    assert {tuple(rc) for rc in np.argwhere(arrays["fixations"][big])} == set(
        BIG_FIXATIONS.values())
    # +1 per fixation, blurred: the map's mass is the number of fixations
    assert arrays["gaze"][big].sum() == pytest.approx(len(BIG_FIXATIONS), rel=0.02)
    assert arrays["labels"][big] == 0

    # no patient in two splits, and each split holds some patient
    by_split: dict[int, set[str]] = {}
    for did, s in zip(ids, arrays["split"]):
        by_split.setdefault(int(s), set()).add(tree.patients[did])
    assert set(by_split) == {0, 1, 2}
    assert not (by_split[0] & by_split[1] or by_split[0] & by_split[2]
                or by_split[1] & by_split[2])

    assert run_cli(["info", str(out)], monkeypatch) == 0
    shown = capsys.readouterr().out
    assert "source=mimic-egd" in shown and "gaze, fixations" in shown


def test_split_is_deterministic_and_grouped() -> None:
    groups = [f"p{i // 3}" for i in range(60)]
    a = grouped_split(groups, 0.15, 0.15, seed=3)
    assert (a == grouped_split(groups, 0.15, 0.15, seed=3)).all()
    assert not (a == grouped_split(groups, 0.15, 0.15, seed=4)).all()
    for g in set(groups):
        assert len({int(s) for s, gg in zip(a, groups) if gg == g}) == 1
    counts = np.bincount(a, minlength=3)
    assert counts[1] == pytest.approx(9, abs=3) and counts[2] == pytest.approx(9, abs=3)


def test_gaze_sigma_scales_anisotropically() -> None:
    fit = Fit(1000, 800, 224)  # x scaled by .224, y by .28
    gaze, fix = gaze_maps(fit, np.array([500.0]), np.array([400.0]), sigma_px=50)
    rows, cols = np.indices(gaze.shape)
    w = gaze / gaze.sum()
    r0, c0 = (w * rows).sum(), (w * cols).sum()
    assert np.sqrt((w * (rows - r0) ** 2).sum()) == pytest.approx(50 * 0.28, rel=0.03)
    assert np.sqrt((w * (cols - c0) ** 2).sum()) == pytest.approx(50 * 0.224, rel=0.03)
    assert fix.sum() == 1 and fix[112, 112]


def test_letterbox_maps_points_consistently() -> None:
    fit = Fit(1000, 800, 224, "pad")  # scaled to 224x179, 22 rows of padding above
    assert (fit.new_w, fit.new_h, fit.off_y) == (224, 179, 22)
    rows, cols = fit.points(np.array([0, 999]), np.array([0, 799]))
    assert rows.tolist() == [22, 22 + 178] and cols.tolist() == [0, 223]


def test_out_of_image_fixation_is_an_error(tree: EgdTree, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fix_csv = tree.egd / "fixations.csv"
    with open(fix_csv, "a", newline="") as fh:
        csv.writer(fh).writerow([1, 0, tree.big_id, 9, 9.0, 9, 0.5, 0.5, 1, 0.2, 9, 1, 1500, 300])
    out = tmp_path / "egd.h5"
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch, str(fix_csv), tree.big_id,
                      "X_ORIGINAL=1500, Y_ORIGINAL=300", "1000x800")
    # --outside drop drops and reports it instead
    assert run_cli(_argv(tree, out, "--outside", "drop"), monkeypatch) == 0
    assert "dropped 1 fixations outside their image" in capsys.readouterr().out


def test_non_numeric_coordinate(tree: EgdTree, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    fix_csv = tree.egd / "fixations.csv"
    with open(fix_csv, "a", newline="") as fh:
        csv.writer(fh).writerow([1, 0, tree.big_id, 9, 9.0, 9, 0.5, 0.5, 1, 0.2, 9, 1, "12a", 3])
    out = tmp_path / "egd.h5"
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch, f"{fix_csv}:",
                      "column 'X_ORIGINAL' holds '12a'")


def test_missing_csv(tree: EgdTree, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tree.egd / "fixations.csv").unlink()
    out = tmp_path / "egd.h5"
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch,
                      str(tree.egd / "fixations.csv"), "no such file")


def test_unreadable_csv(tree: EgdTree, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tree.egd / "master_sheet.csv").write_bytes(b"dicom_id,path\n\xff\xfe\x00garbage\n")
    out = tmp_path / "egd.h5"
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch,
                      str(tree.egd / "master_sheet.csv"), "cannot read CSV")


def test_missing_columns_are_named(tree: EgdTree, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    header = [h for h in MASTER_HEADER if h not in ("patient_id", "CHF")]
    write_csv(tree.egd / "master_sheet.csv", header, [["x"] * len(header)])
    out = tmp_path / "egd.h5"
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch,
                      str(tree.egd / "master_sheet.csv"), "missing column(s) 'patient_id', 'CHF'")


def test_missing_fixation_column_is_named(tree: EgdTree, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    write_csv(tree.egd / "fixations.csv", [h for h in FIXATION_HEADER if h != "Y_ORIGINAL"], [])
    out = tmp_path / "egd.h5"
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch,
                      str(tree.egd / "fixations.csv"), "missing column(s) 'Y_ORIGINAL'")


def test_undecodable_image_is_named(tree: EgdTree, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    did = next(d for d in tree.patients if d != tree.big_id)
    tree.image_paths[did].write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    out = tmp_path / "egd.h5"
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch, str(tree.image_paths[did]),
                      "cannot decode image")


def test_existing_output_needs_overwrite(tree: EgdTree, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "egd.h5"
    out.write_bytes(b"precious")
    code = run_cli(_argv(tree, out), monkeypatch)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: {out}: output exists; pass --overwrite to replace it"
    assert out.read_bytes() == b"precious"  # untouched
    assert run_cli(_argv(tree, out, "--overwrite"), monkeypatch) == 0
    assert read_dataset(out, require_splits=())[1].n == len(tree.patients)


@pytest.mark.slow
def test_train_smoke_on_prepared_egd(tree: EgdTree, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = pytest.importorskip("mimic_runner.cli.run")
    out = tmp_path / "egd.h5"
    assert run_cli(_argv(tree, out), monkeypatch) == 0
    run_training(run, ["data=mimic_egd", "trainer=smoke", f"data.path={out}"], tmp_path,
                 monkeypatch)


def test_blank_coordinates_and_dicom_only(tree: EgdTree, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tree.egd / "fixations.csv", "a", newline="") as fh:
        csv.writer(fh).writerow([1, 0, tree.big_id, 9, 9.0, 9, 0.5, 0.5, 1, 0.2, 9, 1, "", ""])
    did = next(d for d in tree.patients if d != tree.big_id)
    jpg = tree.image_paths[did]
    jpg.rename(jpg.with_suffix(".dcm"))
    out = tmp_path / "egd.h5"
    assert run_cli(_argv(tree, out), monkeypatch) == 0
    report = capsys.readouterr().out
    assert "dropped 1 fixations with a blank X_ORIGINAL/Y_ORIGINAL" in report
    assert f"(only a DICOM found; use MIMIC-CXR-JPG for --images): {did}" in report

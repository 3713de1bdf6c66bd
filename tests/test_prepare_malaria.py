"""`mimic-data prepare malaria` on a small tree in the NIH cell_images layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fixtures_prepare import (
    MALARIA_PATIENTS,
    assert_user_error,
    make_malaria_tree,
    malaria_patient,
    n_malaria_cells,
    run_cli,
    run_training,
)
from PIL import Image

from mimic_runner.data.prepare.malaria import patient_of
from mimic_runner.data.schema import read_dataset


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "malaria", "--root", str(root), "--out", str(out), "--size", "32",
            "--val", "0.2", "--test", "0.2", *extra]


@pytest.mark.parametrize("which", ["parent", "cell_images"])
def test_prepare_malaria(which: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_malaria_tree(tmp_path / "src")
    root = base.parent if which == "parent" else base
    out = tmp_path / "malaria.h5"
    assert run_cli(_argv(root, out), monkeypatch) == 0
    report = capsys.readouterr().out
    assert f"ignored nested duplicate {base / 'cell_images'}" in report
    assert "Thumbs.db" in report

    arrays, info = read_dataset(out, require_splits=())
    # Thumbs.db and the nested duplicate are not counted
    assert info.n == n_malaria_cells()
    assert (info.channels, info.height, info.width) == (3, 32, 32)
    assert info.maps == [] and info.attrs["aligned"] is False
    assert info.attrs["source"] == "nih-malaria"
    assert info.class_names == ["Parasitized", "Uninfected"]
    assert info.class_counts["train"]["Parasitized"] > 0

    # no patient prefix in two splits
    splits: dict[str, set[int]] = {}
    for i, s in zip(arrays["ids"], arrays["split"]):
        splits.setdefault(patient_of(str(i).split("/")[1]), set()).add(int(s))
    assert set(splits) == {malaria_patient(p) for p in MALARIA_PATIENTS}
    assert all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} == {0, 1, 2}

    assert run_cli(["info", str(out)], monkeypatch) == 0
    assert "source=nih-malaria" in capsys.readouterr().out


def test_patient_prefix() -> None:
    assert patient_of("C189P150ThinF_IMG_20151203_141809_cell_84") == "C189P150"
    assert patient_of("C33P1thinF_IMG_20150619_114756a_cell_179") == "C33P1"
    assert patient_of("C1_thinF_IMG_20150604_104722_cell_9") == "C1"
    assert patient_of("odd_name_cell_1") == "odd"


def test_pad_mode_keeps_aspect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_malaria_tree(tmp_path / "src", duplicate=False)
    out = tmp_path / "m.h5"
    assert run_cli(_argv(base, out, "--mode", "pad"), monkeypatch) == 0
    arrays, _ = read_dataset(out, require_splits=())
    for image_id, img in zip(arrays["ids"], arrays["images"]):
        w, h = Image.open(base / f"{image_id}.png").size  # all crops are taller than wide
        blank = (img == 0).all(axis=(0, 1))  # zero columns = letterbox padding
        assert blank.sum() == 32 - round(w * 32 / h), image_id


def test_missing_class_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_malaria_tree(tmp_path / "src", duplicate=False)
    shutil.rmtree(base / "Uninfected")
    out = tmp_path / "m.h5"
    assert_user_error(_argv(base, out), out, capsys, monkeypatch,
                      str(base / "Uninfected"), "class folder missing")


def test_empty_class_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_malaria_tree(tmp_path / "src", duplicate=False)
    for f in (base / "Parasitized").glob("*.png"):
        f.unlink()
    out = tmp_path / "m.h5"
    assert_user_error(_argv(base, out), out, capsys, monkeypatch,
                      str(base / "Parasitized"), "holds no images")


def test_no_cell_images_here(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "m.h5"
    assert_user_error(_argv(tmp_path / "empty", out), out, capsys, monkeypatch,
                      str(tmp_path / "empty"), "no class folders")


def test_undecodable_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_malaria_tree(tmp_path / "src", duplicate=False)
    bad = sorted((base / "Uninfected").glob("*.png"))[3]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "m.h5"
    assert_user_error(_argv(base, out), out, capsys, monkeypatch, str(bad), "cannot decode image")


def test_existing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_malaria_tree(tmp_path / "src", duplicate=False)
    out = tmp_path / "m.h5"
    out.write_bytes(b"keep")
    code = run_cli(_argv(base, out), monkeypatch)
    assert code == 2 and "output exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"


@pytest.mark.slow
def test_train_smoke_on_prepared_malaria(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = pytest.importorskip("mimic_runner.cli.run")
    base = make_malaria_tree(tmp_path / "src", duplicate=False)
    out = tmp_path / "m.h5"
    assert run_cli(_argv(base, out), monkeypatch) == 0
    run_training(run, ["data=malaria", "trainer=smoke", f"data.path={out}", "data.image_size=32"],
                 tmp_path, monkeypatch)

"""`mimic-data prepare folder` on a small class-per-folder tree with parallel map trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_prepare import (
    FolderTree,
    assert_user_error,
    make_folder_tree,
    run_cli,
    run_training,
    write_csv,
)

from mimic_runner.data.schema import read_dataset


@pytest.fixture
def tree(tmp_path: Path) -> FolderTree:
    return make_folder_tree(tmp_path / "src")


def _argv(tree: FolderTree, out: Path, *extra: str) -> list[str]:
    return ["prepare", "folder", "--root", str(tree.root), "--out", str(out), "--size", "32",
            "--val", "0.2", "--test", "0.2", *extra]


def test_prepare_folder_with_maps(tree: FolderTree, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "f.h5"
    argv = _argv(tree, out, "--heatmaps", str(tree.heatmaps), "--fixations", str(tree.fixations))
    assert run_cli(argv, monkeypatch) == 0
    assert "Thumbs.db" in capsys.readouterr().out
    arrays, info = read_dataset(out, require_splits=())
    assert info.class_names == ["benign", "malignant"]
    assert sorted(arrays["ids"]) == sorted(tree.ids)
    assert info.channels == 1  # all images grey: one channel kept
    assert sorted(info.maps) == ["fixations", "gaze"] and info.attrs["source"] == "folder"
    assert info.split_counts == {"train": 6, "val": 2, "test": 2}  # stratified: 3/1/1 per class
    for k in range(2):
        assert {int(s) for s, y in zip(arrays["split"], arrays["labels"]) if y == k} == {0, 1, 2}

    # the marked pixel (x=10, y=20) of the 64x48 mask -> row floor(20.5*32/48), col floor(10.5/2)
    for fix in arrays["fixations"]:
        assert [tuple(rc) for rc in np.argwhere(fix)] == [(13, 5)]
    # heatmaps (PNG, half-size PNG, .npy) all land on the same rectangle
    for gaze, image_id in zip(arrays["gaze"], arrays["ids"]):
        inside = gaze[8:18, 11:19].mean()
        assert inside > 5 * max(gaze[:5].mean(), 1e-6), image_id

    assert run_cli(["info", str(out)], monkeypatch) == 0
    assert "gaze, fixations" in capsys.readouterr().out


def test_rgb_and_rois(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_folder_tree(tmp_path / "src", rgb=True)
    out = tmp_path / "f.h5"
    assert run_cli(_argv(tree, out, "--rois", str(tree.rois), "--aligned"), monkeypatch) == 0
    arrays, info = read_dataset(out, require_splits=())
    assert info.channels == 3 and info.maps == ["gaze"] and info.attrs["aligned"] is True
    gaze = arrays["gaze"]
    assert gaze.min() >= 0 and gaze.max() <= 1
    assert (gaze[:, 5, 25] == 1).all() and (gaze[:, 30, 5] == 0).all()
    assert run_cli(_argv(tree, out, "--channels", "1", "--overwrite"), monkeypatch) == 0
    assert read_dataset(out, require_splits=())[1].channels == 1


def test_missing_maps_are_skipped_and_reported(tree: FolderTree, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tree.heatmaps / "benign" / "case0.png").unlink()
    out = tmp_path / "f.h5"
    assert run_cli(_argv(tree, out, "--heatmaps", str(tree.heatmaps)), monkeypatch) == 0
    assert "skipped 1 (no heatmap): benign/case0" in capsys.readouterr().out
    assert read_dataset(out, require_splits=())[1].n == len(tree.ids) - 1


def test_split_file(tree: FolderTree, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [[f"{i}.png", ("train", "val", "test")[n % 3]] for n, i in enumerate(tree.ids)]
    rows[0][0] = f"images/{tree.ids[0]}.png"  # a longer path ending in the id also matches
    split_csv = write_csv(tmp_path / "split.csv", ["path", "split", ""],
                          [*rows[:-1], ["case0", "test"]])  # a stem in both classes: ambiguous
    out = tmp_path / "f.h5"
    assert run_cli(_argv(tree, out, "--split-file", str(split_csv)), monkeypatch) == 0
    report = capsys.readouterr().out
    assert f"skipped 1 (not in split.csv): {tree.ids[-1]}" in report
    assert "1 id(s) of split.csv match no image: case0" in report
    arrays, _ = read_dataset(out, require_splits=())
    got = dict(zip(arrays["ids"], arrays["split"]))
    for n, image_id in enumerate(tree.ids[:-1]):
        assert got[image_id] == n % 3

    write_csv(split_csv, ["id", "split"], [[tree.ids[0], "training"]])
    out2 = tmp_path / "f2.h5"
    assert_user_error(_argv(tree, out2, "--split-file", str(split_csv)), out2, capsys,
                      monkeypatch, f"{split_csv}:2", "'training'")


def test_empty_class_folder(tree: FolderTree, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(tree.root / "malignant")
    (tree.root / "malignant").mkdir()
    (tree.root / "malignant" / "Thumbs.db").write_bytes(b"junk")
    out = tmp_path / "f.h5"
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch,
                      str(tree.root / "malignant"), "holds no images")


def test_missing_class_folder(tree: FolderTree, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "f.h5"
    assert_user_error(_argv(tree, out, "--classes", "benign,atypical"), out, capsys, monkeypatch,
                      str(tree.root), "class folder(s) 'atypical' missing")
    shutil.rmtree(tree.root / "malignant")
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch, str(tree.root),
                      "found 1 class folder(s)")


def test_undecodable_image_is_named(tree: FolderTree, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tree.root / "malignant" / "case1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "f.h5"
    assert_user_error(_argv(tree, out), out, capsys, monkeypatch, str(bad), "cannot decode image")


def test_bad_maps(tree: FolderTree, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "f.h5"
    assert_user_error(_argv(tree, out, "--heatmaps", str(tree.heatmaps), "--rois",
                            str(tree.rois)), out, capsys, monkeypatch, "--heatmaps and --rois")
    bad = tree.heatmaps / "benign" / "case2.npy"
    np.save(bad, np.zeros((10, 64)))
    assert_user_error(_argv(tree, out, "--heatmaps", str(tree.heatmaps)), out, capsys,
                      monkeypatch, str(bad), "different aspect ratio")


def test_existing_output(tree: FolderTree, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "f.h5"
    out.write_bytes(b"keep")
    code = run_cli(_argv(tree, out), monkeypatch)
    assert code == 2 and "output exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"


@pytest.mark.slow
def test_train_smoke_on_prepared_folder(tree: FolderTree, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run = pytest.importorskip("mimic_runner.cli.run")
    out = tmp_path / "f.h5"
    assert run_cli(_argv(tree, out, "--heatmaps", str(tree.heatmaps)), monkeypatch) == 0
    run_training(run, ["data=folder", "trainer=smoke", f"data.path={out}"], tmp_path,
                 monkeypatch)


def test_flat_map_tree(tree: FolderTree, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat heatmaps/<stem>.png matches by stem, unless two images share the stem."""
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(tree.heatmaps / "benign" / "case0.png", flat / "case0.png")  # stem in 2 classes
    (tree.root / "benign" / "solo.png").write_bytes((tree.root / "benign" / "case0.png")
                                                    .read_bytes())
    shutil.copy(tree.heatmaps / "benign" / "case0.png", flat / "solo.png")
    out = tmp_path / "f.h5"
    assert run_cli(_argv(tree, out, "--heatmaps", str(flat)), monkeypatch) == 0
    assert "skipped 10 (no heatmap)" in capsys.readouterr().out
    assert list(read_dataset(out, require_splits=())[0]["ids"]) == ["benign/solo"]

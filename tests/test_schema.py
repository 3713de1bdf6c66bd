"""The HDF5 schema: round trip, and one clear error per kind of broken file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import dataset_arrays

from mimic_runner.cli.data import main as data_main
from mimic_runner.data.schema import read_dataset, validate_dataset, write_dataset
from mimic_runner.errors import DatasetError


def _arrays(n: int = 12, size: int = 8) -> dict:
    return dataset_arrays(n, size, fixated=0.1)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "good.h5", **_arrays())


def test_round_trip(good: Path) -> None:
    arrays, info = read_dataset(good, split="test")
    assert info.n == 12 and info.num_classes == 3 and info.maps == ["gaze", "fixations",
                                                                   "confounder"]
    assert info.split_counts == {"train": 4, "val": 4, "test": 4}
    assert list(arrays["ids"]) == ["img002", "img005", "img008", "img011"]
    assert arrays["images"].shape == (4, 1, 8, 8)


def test_finding_is_an_optional_map(tmp_path: Path) -> None:
    arrays = _arrays()
    finding = np.zeros((12, 8, 8), bool)
    finding[1, 2:5, 2:5] = True
    path = write_dataset(tmp_path / "f.h5", **arrays, finding=finding)
    loaded, info = read_dataset(path)
    assert info.maps == ["gaze", "fixations", "confounder", "finding"]
    assert loaded["finding"].dtype == np.bool_ and np.array_equal(loaded["finding"], finding)


def test_write_refuses_to_overwrite(good: Path) -> None:
    from mimic_runner.errors import UserError

    with pytest.raises(UserError, match="exists"):
        write_dataset(good, **_arrays())


def _corrupt(path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _replace(key: str, value: np.ndarray):  # type: ignore[no-untyped-def]
    def edit(f: h5py.File) -> None:
        del f[key]
        f.create_dataset(key, data=value)

    return edit


CASES = {
    "missing key": (lambda f: f.__delitem__("labels"), "key 'labels': missing"),
    "label out of range": (_replace("labels", np.array([0, 1, 7] * 4, np.int64)),
                           "label 7 at row 2 is out of range"),
    "NaN gaze": (_replace("gaze", np.full((12, 8, 8), np.nan, np.float32)),
                 "key 'gaze': NaN or Inf at row 0"),
    "negative gaze": (_replace("gaze", -np.ones((12, 8, 8), np.float32)),
                      "key 'gaze': negative values"),
    "wrong dtype": (_replace("images", np.zeros((12, 1, 8, 8), np.float32)),
                    "key 'images': dtype float32, expected uint8"),
    "N mismatch": (_replace("split", np.zeros(11, np.uint8)), "key 'split': shape (11,)"),
    "wrong map shape": (_replace("fixations", np.zeros((12, 4, 4), bool)),
                        "key 'fixations': shape (12, 4, 4)"),
    "empty split": (_replace("split", np.zeros(12, np.uint8)), "the 'val' split is empty"),
    "schema version": (lambda f: f.attrs.__setitem__("schema_version", 99),
                       "'schema_version' is 99"),
    "finding dtype": (lambda f: f.create_dataset("finding", data=np.zeros((12, 8, 8), np.uint8)),
                      "key 'finding': dtype uint8, expected bool"),
    "finding shape": (lambda f: f.create_dataset("finding", data=np.zeros((12, 8, 4), bool)),
                      "key 'finding': shape (12, 8, 4)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_names_the_problem(good: Path, case: str) -> None:
    edit, message = CASES[case]
    _corrupt(good, edit)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_dataset(good)


@pytest.mark.parametrize("case", ["missing key", "label out of range", "NaN gaze"])
def test_info_cli_fails_in_one_line(good: Path, case: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _corrupt(good, CASES[case][0])
    with pytest.raises(SystemExit) as exc:
        data_main(["info", str(good)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(good) in err
    assert "Traceback" not in err


def test_info_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        data_main(["info", str(tmp_path / "nope.h5")])
    assert exc.value.code == 2
    assert "no such dataset file" in capsys.readouterr().err


def test_info_cli_summary(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_main(["info", str(good)])
    out = capsys.readouterr().out
    assert "12 images" in out and "pneumonia" in out and "gaze, fixations, confounder" in out


def test_not_hdf5(tmp_path: Path) -> None:
    bad = tmp_path / "x.h5"
    bad.write_text("hello")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        validate_dataset(bad)

"""synth_smear: shapes, determinism, parasite attention, shortcut, CLI."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from scipy import ndimage, stats

from mimic_runner.cli.data import main as data_main
from mimic_runner.data import synth_smear
from mimic_runner.data.schema import validate_dataset, write_dataset
from mimic_runner.errors import UserError

N = 200


@pytest.fixture(scope="module")
def generated() -> tuple[dict, dict]:
    return synth_smear.generate_with_truth(n=N, seed=0)


def test_arrays_match_the_schema_and_write(generated, tmp_path):
    data, _ = generated
    assert set(data) <= set(inspect.signature(write_dataset).parameters)
    assert data["images"].dtype == np.uint8 and data["images"].shape == (N, 3, 64, 64)
    assert data["labels"].dtype == np.int64 and data["split"].dtype == np.uint8
    assert data["gaze"].dtype == np.float32 and data["gaze"].shape == (N, 64, 64)
    assert data["fixations"].dtype == bool and data["confounder"].dtype == bool
    assert list(data["class_names"]) == ["Parasitized", "Uninfected"]
    assert data["source"] == "synth_smear" and data["aligned"] is False
    assert data["ids"][7] == "synth_smear-000007"
    for k in range(2):
        in_class = data["labels"] == k
        assert in_class.sum() == N // 2
        assert [int((data["split"][in_class] == s).sum()) for s in range(3)] == [70, 15, 15]
    info = validate_dataset(write_dataset(tmp_path / "smear.h5", **data))
    assert info.channels == 3 and info.attrs["aligned"] is False
    for name, par in inspect.signature(synth_smear.generate).parameters.items():
        assert type(par.default) in (int, float, bool, str), name


def test_deterministic_per_seed():
    a = synth_smear.generate(n=20, seed=5)
    b = synth_smear.generate(n=20, seed=5)
    for key in ("images", "labels", "split", "gaze", "fixations", "confounder"):
        assert np.array_equal(a[key], b[key]), key
    assert not np.array_equal(a["images"], synth_smear.generate(n=20, seed=6)["images"])


def test_cells_look_like_stained_cells_on_a_dark_background(generated):
    data, truth = generated
    img = data["images"].astype(float)
    cell, background = truth["cell"], ~ndimage.binary_dilation(truth["cell"], iterations=2,
                                                               structure=np.ones((1, 3, 3)))
    background &= ~ndimage.binary_dilation(data["confounder"], structure=np.ones((1, 3, 3)))
    red, green = img[:, 0], img[:, 1]
    assert red[cell].mean() > green[cell].mean() + 30  # pink-purple stain
    assert img.mean(1)[background].mean() < 25  # dark surround
    # Parasites are darker than the cell around them.
    par = truth["parasites"]
    assert img.mean(1)[par].mean() < img.mean(1)[cell & ~par].mean() - 10


def test_gaze_covers_parasites_only(generated):
    data, truth = generated
    labels, gaze, par = data["labels"], data["gaze"], truth["parasites"]
    infected = labels == 0
    assert np.array_equal(data["fixations"], par)
    assert par[infected].any(axis=(1, 2)).all()
    assert (truth["n_parasites"][infected] >= 1).all()
    assert not par[~infected].any()
    # Uninfected cells have no parasite, hence an all-zero gaze (documented in the module).
    assert not gaze[~infected].any()
    assert (gaze[par] > 0).all()
    near = ndimage.maximum_filter(par, size=(1, 9, 9))  # dilation by 4 px
    assert not gaze[~near].any()
    inside = ndimage.binary_dilation(truth["cell"], structure=np.ones((1, 3, 3), bool))
    assert not (par & ~inside).any()


def test_marker_correlates_with_class_in_train_only_and_never_meets_gaze(generated):
    data, truth = generated
    conf, slot = data["confounder"], truth["marker_slot"]
    assert conf.any(axis=(1, 2)).all()
    assert (data["gaze"][conf] == 0).all() and not (data["fixations"] & conf).any()
    cols = (conf.sum(1) * np.arange(64)).sum(1) / conf.sum((1, 2))
    rows = (conf.sum(2) * np.arange(64)).sum(1) / conf.sum((1, 2))
    assert (rows < 32).all()  # both slots are top corners
    assert np.array_equal(slot, (cols > 32).astype(int))
    labels, train = data["labels"], data["split"] == 0
    assert abs((slot[train] == labels[train]).mean() - 0.95) < 0.05
    assert abs((slot[~train] == labels[~train]).mean() - 0.5) < 0.15

    def table(m: np.ndarray) -> np.ndarray:
        return stats.contingency.crosstab(labels[m], slot[m]).count

    assert stats.chi2_contingency(table(train)).pvalue < 1e-20
    assert stats.chi2_contingency(table(~train)).pvalue > 1e-3


def test_bad_arguments():
    with pytest.raises(UserError, match="too small"):
        synth_smear.generate(n=5)
    with pytest.raises(UserError, match="parasite_size"):
        synth_smear.generate(n=20, parasite_size=0.5)
    plain = synth_smear.generate(n=20, marker=False)
    assert not plain["confounder"].any()


def test_cli(tmp_path, capsys):
    out = tmp_path / "smear.h5"
    data_main(["synth-smear", "--out", str(out), "--n", "20", "--set", "max_parasites=1"])
    assert capsys.readouterr().out.startswith(f"wrote {out}: 20 images 3x64x64")
    assert validate_dataset(out).attrs["source"] == "synth_smear"
    with pytest.raises(SystemExit):
        data_main(["synth-smear", "--out", str(out), "--n", "20"])
    assert "output exists" in capsys.readouterr().err

"""`mimic-explain global|peppr` on a tiny run built in the test (untrained small CNN on a
32x32 three-class set): outputs, reuse vs recomputation of the maps, and bad input (one clear
line, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mimic_runner.cli.explain import main
from mimic_runner.data.schema import write_dataset
from mimic_runner.io import atomic_path

N_PER_SPLIT = 12
SIZE = 32
CLASSES = ["Normal", "CHF", "pneumonia"]


def tiny_dataset(path: Path, splits: tuple[int, ...] = (0, 1, 2), aligned: bool = True,
                 overwrite: bool = False) -> Path:
    g = np.random.default_rng(0)
    n = N_PER_SPLIT * 3
    labels = (np.arange(n) // 3) % 3  # every split gets every class
    images = g.integers(0, 120, (n, 1, SIZE, SIZE)).astype(np.uint8)
    for i, y in enumerate(labels):  # a bright square whose place depends on the class
        images[i, 0, 4 + 8 * y:12 + 8 * y, 10:18] = 230
    split = np.asarray([splits[i % len(splits)] for i in range(n)], dtype=np.uint8)
    return write_dataset(path, images=images, labels=labels.astype(np.int64), split=split,
                         ids=[f"img{i:03d}" for i in range(n)], class_names=CLASSES,
                         source="test", aligned=aligned, overwrite=overwrite)


def make_run(run_dir: Path, data_path: Path, explanations: bool = True) -> Path:
    """A run directory as mimic-run leaves it: config, checkpoint, explanations.h5."""
    from mimic_runner.config import compose
    from mimic_runner.training.builders import build_datamodule, build_module

    cfg = compose(["data=default", "data.name=tiny", f"data.path={data_path}", "model=baseline"])
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    dm.setup()
    module = build_module(cfg, dm).eval()
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               run_dir / "checkpoints" / "last.ckpt")
    if explanations:
        t = dm.splits["test"].tensors
        batch = {"image": dm.normalise(t["image"]), "label": t["label"]}
        out, maps, _ = module.explain_batch(batch)
        prob = out.logits.softmax(-1)
        with atomic_path(run_dir / "explanations.h5") as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("maps", data=maps.half().numpy())
            f.create_dataset("labels", data=t["label"].numpy().astype(np.int64))
            f.create_dataset("predictions", data=prob.argmax(-1).numpy().astype(np.int64))
            f.create_dataset("probabilities", data=prob.numpy().astype(np.float32))
            f.create_dataset("ids", data=np.asarray(dm.ids["test"], dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
            f.attrs["class_names"] = np.asarray(CLASSES, dtype=object)
            f.attrs["explain_target"] = "pred"
            f.attrs["model"] = "baseline"
    return run_dir


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explain-run")
    data = tiny_dataset(root / "tiny.h5")
    return make_run(root / "run", data)


@pytest.fixture
def run(template: Path, tmp_path: Path) -> Path:
    """A private copy of the template run (tests may delete or add files)."""
    return Path(shutil.copytree(template, tmp_path / "run"))


def files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting a user error: exit 2 and one line on stderr, returned."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


# -- global ----------------------------------------------------------------------------------------
def test_global_reuses_explanations_h5(run: Path) -> None:
    main(["global", str(run), "--device", "cpu"])
    with h5py.File(run / "global_explanations.h5", "r") as f:
        assert f.attrs["maps_source"] == "explanations.h5"
        assert f.attrs["split"] == "test" and f.attrs["group_by"] == "label"
        assert f["overall"].shape == (SIZE, SIZE)
        assert f["per_class"].shape == (3, SIZE, SIZE)
        assert f["per_class_std"].shape == (3, SIZE, SIZE)
        assert f["mean_image"].shape == (1, SIZE, SIZE)
        assert f["counts"][()].tolist() == [4, 4, 4]
        assert f["overall"][()].sum() == pytest.approx(1.0, abs=1e-4)
        with h5py.File(run / "explanations.h5", "r") as e:
            maps = e["maps"][()].astype(np.float32)
        norm = maps / maps.sum(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(f["overall"][()], norm.mean(0), rtol=1e-4, atol=1e-7)
    assert (run / "global_maps.png").stat().st_size > 10_000
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_recomputed_test_maps_match_the_stored_ones(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    main(["global", str(run), "--recompute", "--out", str(out), "--checkpoint", "last"])
    main(["global", str(run)])
    with h5py.File(out / "global_explanations.h5", "r") as a, \
            h5py.File(run / "global_explanations.h5", "r") as b:
        assert a.attrs["maps_source"] == "recomputed"
        np.testing.assert_allclose(a["overall"][()], b["overall"][()], rtol=2e-2, atol=1e-6)


def test_global_on_val_recomputes_and_groups_by_prediction(run: Path) -> None:
    main(["global", str(run), "--split", "val", "--group-by", "pred", "--normalize", "minmax"])
    assert not (run / "global_explanations.h5").exists()  # test outputs untouched
    with h5py.File(run / "global_explanations_val.h5", "r") as f:
        assert f.attrs["maps_source"] == "recomputed" and f.attrs["split"] == "val"
        assert f.attrs["group_by"] == "pred" and f.attrs["normalize"] == "minmax"
        counts = f["counts"][()]
        assert counts.sum() == N_PER_SPLIT
        for k in np.flatnonzero(counts == 0):  # classes never predicted: NaN, noted
            assert np.isnan(f["per_class"][k]).all()
            assert CLASSES[k] in f.attrs["notes"]
    assert (run / "global_maps_val.png").exists()


def test_not_aligned_dataset_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_dataset(tmp_path / "loose.h5", aligned=False)
    run = make_run(tmp_path / "run", data)
    main(["global", str(run)])
    assert "aligned=false" in capsys.readouterr().err
    with h5py.File(run / "global_explanations.h5", "r") as f:
        assert not f.attrs["aligned"] and "aligned=false" in f.attrs["notes"]


# -- PEPPR ----------------------------------------------------------------------------------------
def test_peppr_writes_every_point_and_the_summary(run: Path) -> None:
    main(["peppr", str(run), "--steps", "5", "--random-seeds", "2", "--ranking", "class",
          "--fill", "blur", "--batch-size", "16"])
    rows = (run / "peppr.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header == ["ranking", "seed", "mode", "step", "fraction", "n_pixels", "accuracy",
                      "p_true", "agreement", "p_pred"]
    body = [dict(zip(header, r.split(","))) for r in rows[1:]]
    names = {(r["ranking"], r["seed"]) for r in body}
    assert names == {("class", ""), ("local", ""), ("random", "0"), ("random", "1"),
                     ("inverse", "")}
    assert len(body) == 5 * 2 * 5
    # Every curve shares its ends: clean image and fully erased image.
    for mode, first, last in (("erase", "clean", "full"), ("restore", "full", "clean")):
        ends = {(r["step"], r["accuracy"], r["p_true"]) for r in body if r["mode"] == mode
                and r["step"] in ("0", "4")}
        assert len(ends) == 2, (mode, first, last)
    assert {r["fraction"] for r in body} == {"0.000000", "0.250000", "0.500000", "0.750000",
                                             "1.000000"}
    rec = json.loads((run / "peppr.json").read_text())
    assert rec["ranking"] == "class" and rec["fill"] == "blur" and rec["blur_sigma"] == 2.0
    assert rec["random_patch"] == 2  # 32 px / 16
    assert rec["n_images"] == N_PER_SPLIT and rec["maps_source"] == "explanations.h5"
    s = rec["summary"]
    assert set(s["auc"]) == {"class", "local", "random_0", "random_1", "inverse"}
    assert set(s["gap_to_random"]) == {"class", "local", "inverse"}
    assert set(s["verdicts"]["agreement"]) == {"class", "local", "inverse"}
    assert s["random"]["erase"]["accuracy"]["n"] == 2
    assert set(rec["reading"]) == {"class", "local", "inverse"}
    assert rec["seconds"]["evaluate"] >= 0 and rec["forward_passes"] > 0
    auc = s["auc"]["class"]
    assert auc["peppr"]["accuracy"] == pytest.approx(
        auc["restore"]["accuracy"] - auc["erase"]["accuracy"])
    assert (run / "peppr.png").stat().st_size > 10_000


def test_peppr_global_ranking_on_val_with_zero_fill(run: Path) -> None:
    main(["peppr", str(run), "--split", "val", "--steps", "3", "--random-seeds", "0",
          "--fill", "zero", "--no-local-control", "--max-images", "5", "--metric", "agreement",
          "--random-patch", "1"])
    rec = json.loads((run / "peppr_val.json").read_text())
    assert rec["n_images"] == 5 and rec["maps_source"] == "recomputed"
    assert set(rec["summary"]["auc"]) == {"global", "inverse"}
    assert "no random control" in rec["summary"]["verdict"]["global"]
    assert rec["agreement_clean"] == 1.0
    assert not (run / "peppr.json").exists()


def test_peppr_local_ranking(run: Path, tmp_path: Path) -> None:
    main(["peppr", str(run), "--ranking", "local", "--steps", "4", "--random-seeds", "1",
          "--max-images", "6", "--out", str(tmp_path / "out")])
    rec = json.loads((tmp_path / "out" / "peppr.json").read_text())
    assert set(rec["summary"]["auc"]) == {"local", "random_0", "inverse"}
    assert rec["forward_passes"] == 6 * (2 + 2 * 2 * 2)  # local + 1 seed; inverse is free
    assert not (run / "peppr.json").exists()


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["global", "peppr"])
def test_missing_explanations_h5(run: Path, command: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    (run / "explanations.h5").unlink()
    before = files(run)
    err = fails([command, str(run)], capsys)
    assert "explanations.h5" in err and "--recompute" in err
    assert files(run) == before


@pytest.mark.parametrize("argv", [["peppr"], ["global", "--split", "val"],
                                  ["global", "--recompute"]])
def test_missing_checkpoint(run: Path, argv: list[str],
                            capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(run / "checkpoints")
    before = files(run)
    err = fails([argv[0], str(run), *argv[1:]], capsys)
    assert "no checkpoint" in err
    assert files(run) == before


def test_global_on_test_needs_no_checkpoint(run: Path) -> None:
    shutil.rmtree(run / "checkpoints")
    main(["global", str(run)])
    assert (run / "global_explanations.h5").exists()


@pytest.mark.parametrize("steps", ["1", "0", "-3", "1002"])
def test_steps_out_of_range(run: Path, steps: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = files(run)
    err = fails(["peppr", str(run), "--steps", steps], capsys)
    assert f"--steps {steps}" in err and "2..1001" in err
    assert files(run) == before


@pytest.mark.parametrize("argv,words", [
    (["--max-images", "0"], "--max-images"),
    (["--batch-size", "0"], "--batch-size"),
    (["--random-seeds", "-1"], "--random-seeds"),
    (["--blur-sigma", "0", "--fill", "blur"], "--blur-sigma"),
    (["--device", "tpu"], "--device"),
    (["--random-patch", "0"], "--random-patch"),
])
def test_bad_options(run: Path, argv: list[str], words: str,
                     capsys: pytest.CaptureFixture[str]) -> None:
    before = files(run)
    assert words in fails(["peppr", str(run), *argv], capsys)
    assert files(run) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no CUDA device" in fails(["global", str(run), "--device", "cuda"], capsys)


def test_not_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such run directory" in fails(["global", str(tmp_path / "nope")], capsys)
    (tmp_path / "empty").mkdir()
    err = fails(["global", str(tmp_path / "empty"), "--recompute"], capsys)
    assert "not a run directory" in err


def test_dataset_without_test_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_dataset(tmp_path / "tiny.h5")
    run = make_run(tmp_path / "run", data, explanations=False)
    tiny_dataset(data, splits=(0, 1), overwrite=True)  # the file now has no test images
    before = files(run)
    for argv in (["peppr", str(run), "--recompute"], ["global", str(run), "--recompute"]):
        err = fails(argv, capsys)
        assert "'test' split is empty" in err
    assert files(run) == before


def test_console_script_exits_2_without_traceback(run: Path, cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("mimic-explain", "peppr", str(run), "--steps", "1002", timeout=300)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error: --steps 1002")

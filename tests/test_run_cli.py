"""`mimic-run` end to end on tiny synthetic data: outputs, determinism, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import TINY

from mimic_runner.data.schema import read_dataset, write_dataset

REQUIRED = ["test/acc", "test/auroc", "test/kld", "test/nss", "test/cc", "test/sim",
            "test/confounder_share", "test/finding_share", "test/kld_floor", "test/gaze_on_zero",
            "test_label/kld", "test_label/nss", "test_correct/kld", "test_class/Normal/kld",
            "ref/uniform/kld", "ref/uniform/nss", "ref/mean_gaze/kld", "ref/mean_gaze/nss",
            "ref/own_gaze_grid/kld", "ref/own_gaze_grid/nss",
            "ref/mean_gaze_grid/kld", "ref/mean_gaze_grid/nss", "test/no_fixation_images",
            "val/acc", "tested_epoch", "model", "seed", "ensemble_size", "dataset",
            "train_seconds", "explain_target"]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _only_run(tmp_path: Path) -> Path:
    runs = [p.parent for p in (tmp_path / "runs").rglob("metrics.json")]
    assert len(runs) == 1, runs
    return runs[0]


def test_smoke_run_outputs(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli("mimic-run", "trainer=smoke", *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    run = _only_run(tmp_path)
    m = _metrics(run)
    for key in REQUIRED:
        assert key in m, key
    for key in REQUIRED:
        if key.startswith("test/"):
            assert math.isfinite(m[key]), (key, m[key])
    assert m["model"] == "baseline" and m["ensemble_size"] == 1 and m["seed"] == 0
    assert (run / ".hydra" / "config.yaml").exists()
    assert (run / "csv" / "metrics.csv").exists()
    assert list((run / "checkpoints").glob("*.ckpt"))
    # explanations.h5 lines up with the test split: same ids, same order, image-sized maps.
    arrays, info = read_dataset(m["dataset_path"], split="test")
    with h5py.File(run / "explanations.h5") as f:
        ids = f["ids"].asstr()[()]
        n = len(ids)
        assert f["maps"].shape == (n, info.height, info.width)
        assert np.array_equal(f["labels"][()], arrays["labels"][:n])
        assert f["probabilities"].shape == (n, 3)
        np.testing.assert_allclose(f["probabilities"][()].sum(1), 1, atol=1e-5)
        assert np.isfinite(f["maps"][()].astype(np.float32)).all()
    assert list(ids) == list(arrays["ids"][:n])


def test_same_seed_same_metrics(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = ["trainer=smoke", "seed=7", *TINY]
    first = cli("mimic-run", *args, "paths.runs_dir=a")
    second = cli("mimic-run", *args, "paths.runs_dir=b")
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    (a,) = (tmp_path / "a").rglob("metrics.json")
    (b,) = (tmp_path / "b").rglob("metrics.json")
    ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
    assert {k: v for k, v in ma.items() if k.startswith("test/")} == {
        k: v for k, v in mb.items() if k.startswith("test/")}


def test_missing_data_file_is_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli("mimic-run", "trainer=smoke", f"data.path={tmp_path}/nope.h5")
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert err[-1].startswith("error: ") and "nope.h5: no such dataset file" in err[-1]
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.rglob("metrics.json"))


def test_unknown_model_lists_the_options(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli("mimic-run", "model=resnet_magic")
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: model=resnet_magic: no such option")
    assert "expl_ensemble" in err[0] and "Traceback" not in res.stderr
    # A typo inside a multirun list is caught before any job starts.
    res = cli("mimic-run", "-m", "model=baseline,expl_ensmble", "trainer=smoke")
    assert res.returncode == 2 and "model=expl_ensmble" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_user_config_dir_adds_options(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "my_baseline.yaml").write_text(
        "defaults:\n  - baseline\nname: my_baseline\n")
    res = cli("mimic-run", "--config-dir", str(tmp_path / "mine"), "model=my_baseline",
              "--cfg", "job")
    assert res.returncode == 0, res.stderr
    assert "name: my_baseline" in res.stdout


def test_unet_needs_gaze(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    n = 30
    path = write_dataset(tmp_path / "nogaze.h5", images=np.zeros((n, 1, 32, 32), np.uint8),
                         labels=np.arange(n) % 2, split=np.arange(n) % 3,
                         ids=[str(i) for i in range(n)], class_names=["a", "b"])
    res = cli("mimic-run", "model=improved_unet", "trainer=smoke", f"data.path={path}")
    assert res.returncode == 2
    assert "needs a 'gaze' map" in res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("model", ["improved_unet", "normal_ensemble", "expl_ensemble"])
def test_each_model_smoke(cli, tmp_path: Path, model: str) -> None:  # type: ignore[no-untyped-def]
    res = cli("mimic-run", f"model={model}", "trainer=smoke", *TINY,
              *(["model.ensemble_size=3"] if "ensemble" in model else []))
    assert res.returncode == 0, res.stderr[-3000:]
    m = _metrics(_only_run(tmp_path))
    for key in REQUIRED:
        assert key in m, key
    if "ensemble" in model:
        assert m["test/kld_at_k"][-1] == m["test/kld"] and len(m["test/nss_at_k"]) == 3
    if "ensemble" in model:
        assert m["ensemble_size"] == 3
        assert math.isfinite(m["test/cam_disagreement"])
        assert all(f"test/acc_member_{i}" in m for i in range(3))
        assert (_only_run(tmp_path) / "member_cams.h5").exists()
    _reloads_alone(_only_run(tmp_path), tmp_path, m)


def _reloads_alone(run_dir: Path, tmp_path: Path, metrics: dict) -> None:
    """A checkpoint copied out of its run folder (the folder then deleted) rebuilds the trained
    module by itself and computes the same logits (mimic_runner.load_checkpoint)."""
    import shutil

    import torch

    import mimic_runner

    ckpt = tmp_path / "copied.ckpt"
    shutil.copy(metrics["tested_checkpoint_path"], ckpt)
    expl = h5py.File(run_dir / "explanations.h5", "r")
    probs = expl["probabilities"][:8]
    ids = expl["ids"].asstr()[:8]
    expl.close()
    data, _ = read_dataset(metrics["dataset_path"], split="test", require_splits=())
    row = {str(i): k for k, i in enumerate(data["ids"])}
    images = torch.from_numpy(np.stack([data["images"][row[i]] for i in ids])).float()
    shutil.rmtree(run_dir)
    module = mimic_runner.load_checkpoint(ckpt)
    mean, std = module.input_normalisation
    with torch.no_grad():
        logits = module((images / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).logits
    assert logits.shape == (8, 3)
    np.testing.assert_allclose(logits.softmax(-1).numpy(), probs, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["baseline", "improved_unet", "normal_ensemble",
                                   "expl_ensemble"])
def test_each_model_smoke_default_data(cli, tmp_path: Path, model: str) -> None:  # type: ignore[no-untyped-def]
    """The issue's check as written: default data, default ensemble size."""
    res = cli("mimic-run", f"model={model}", "trainer=smoke")
    assert res.returncode == 0, res.stderr[-3000:]
    m = _metrics(_only_run(tmp_path))
    assert all(key in m for key in REQUIRED)
    assert m["ensemble_size"] == (10 if "ensemble" in model else 1)

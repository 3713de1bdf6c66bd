"""logger=mlflow and logger=wandb: the loggers, the offline default, and the end-of-run record
(config as parameters, every number of metrics.json, the run folder) read back through the
trackers' own formats."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli
from omegaconf import OmegaConf

from mimic_runner.paths import conf_dir
from mimic_runner.training import tracking

TINY = ["data.synth.params.n=240", "data.image_size=64", "trainer=smoke"]
ENSEMBLE = ["model=expl_ensemble", "model.ensemble_size=2"]
# The shipped default the runs below log (read, not repeated: defaults get re-tuned).
DEFAULT_LAMBDA = float(OmegaConf.load(conf_dir() / "model" / "expl_ensemble.yaml")
                       ["lambda_consistency"])


def _metrics(root: Path) -> dict[str, Any]:
    (path,) = root.glob("runs/*/metrics.json")
    return json.loads(path.read_text())


def _test_numbers(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if k.startswith("test/")
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


# -- pure logic ---------------------------------------------------------------------------------

def test_wandb_is_offline_unless_configured(tmp_path: Path) -> None:
    empty = tmp_path / "netrc"
    empty.write_text("")
    assert tracking.wandb_mode({}, str(empty)) == "offline"
    assert tracking.wandb_mode({"WANDB_MODE": "disabled"}, str(empty)) == "disabled"
    assert tracking.wandb_mode({"WANDB_API_KEY": "k" * 40}, str(empty)) == "online"
    login = tmp_path / "netrc-login"
    login.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    login.chmod(0o600)
    assert tracking.wandb_mode({}, str(login)) == "online"
    # A login for another W&B host does not count for the public one, and the reverse.
    assert tracking.wandb_mode({"WANDB_BASE_URL": "https://wandb.example.org"},
                               str(login)) == "offline"
    assert tracking.wandb_mode({}, str(tmp_path / "missing")) == "offline"


def test_config_params_are_flat_dotted_keys(compose) -> None:  # type: ignore[no-untyped-def]
    params = tracking.config_params(compose(*ENSEMBLE, "trainer=smoke",
                                            "model.lambda_consistency=12.5"))
    assert params["model.lambda_consistency"] == 12.5
    assert params["trainer.max_epochs"] == 2
    assert params["explain.member_cam_epochs"] == [1, 6]
    assert params["model.optimizer.lr"] == pytest.approx(1e-3)
    # ${hydra:...} cannot resolve outside a job: kept as written, not an error.
    assert params["trainer.default_root_dir"].startswith("${hydra:")
    assert tracking._text(True) == "true" and tracking._text(None) == "null"


def test_numeric_metrics_split_scalars_lists_and_skip_undefined() -> None:
    scalars, series = tracking.numeric_metrics({
        "test/acc": 0.5, "test/nss": float("nan"), "test/cc": None, "val/objective": -1.0,
        "test/kld_at_k": [3.0, 2.5], "ref/uniform/kld": 1.9, "train_seconds": 4.2,
        "seed": 7, "model": "baseline", "resumed": False, "undefined_metrics": ["test/cc"]})
    assert scalars == {"test/acc": 0.5, "val/objective": -1.0, "ref/uniform/kld": 1.9,
                       "train_seconds": 4.2}
    assert series == {"test/kld_at_k": [3.0, 2.5]}


def test_default_mlflow_store_is_sqlite_under_runs_dir(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    logger = tracking.mlflow_logger(runs_dir="runs", run_dir=str(tmp_path / "runs" / "seed=3"))
    db = tmp_path / "runs" / "mlflow.db"
    assert logger._tracking_uri == f"sqlite:///{db}"  # absolute: any job finds the same file
    assert db.is_file() and logger._run_name == "seed=3"


# -- real runs ----------------------------------------------------------------------------------

def test_mlflow_run_holds_config_and_every_test_metric(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    r = run_cli(["mimic-run", *TINY, *ENSEMBLE, "logger=mlflow", f"logger.tracking_uri={uri}"],
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (folder,) = (tmp_path / "runs").iterdir()
    assert "tracking_uri" not in folder.name  # where results are tracked is not what ran
    m = _metrics(tmp_path)

    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mimic-runner").experiment_id])
    logged = run.data.metrics
    expected = _test_numbers(m)
    assert expected and "test/cam_disagreement" in expected and "test/kld" in expected
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6), key
    assert logged["val/acc"] == pytest.approx(m["val/acc"])
    assert "train/loss" in logged  # Lightning's per-step values, logged while training
    # A list metric is a curve over k (members in the mean map).
    history = client.get_metric_history(run.info.run_id, "test/kld_at_k")
    assert [h.step for h in history] == [1, 2]
    assert [h.value for h in history] == pytest.approx(m["test/kld_at_k"])
    params = run.data.params
    assert params["model.lambda_consistency"] == str(DEFAULT_LAMBDA)
    assert params["trainer.max_epochs"] == "2"
    assert params["model.name"] == "expl_ensemble" and params["seed"] == "0"
    assert run.data.tags["run_dir"] == m["run_dir"] == str(folder.resolve())
    assert run.data.tags["model"] == "expl_ensemble" and run.info.run_name == folder.name


def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file (LevelDB log framing: 32 KiB blocks, 7-byte
    record headers; protobuf ``Record`` payloads). wandb 0.19+ has no Python reader."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, out, buf = path.read_bytes(), 7, [], b""  # 7: W&B's file header
    assert data[:4] == b":W&B"
    block = 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and n == 0:  # block padding
            pos += block - pos % block
            continue
        buf += data[pos:pos + n]
        pos += n
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_run_file_under_the_run_folder(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    r = run_cli(["mimic-run", *TINY, *ENSEMBLE, "logger=wandb"], cwd=tmp_path,
                env={"WANDB_MODE": "offline", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    (folder,) = (tmp_path / "runs").iterdir()
    (run_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    m = _metrics(tmp_path)
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    names = []
    for rec in _wandb_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind in ("config", "summary"):
            # An item names its key in `key`, or as a path in `nested_key`.
            (config if kind == "config" else summary).update(
                {u.key or ".".join(u.nested_key): json.loads(u.value_json)
                 for u in getattr(rec, kind).update})
        elif kind == "run":
            names.append(rec.run.display_name)
    assert names == [folder.name]
    assert config["trainer.max_epochs"] == 2
    assert config["model.lambda_consistency"] == DEFAULT_LAMBDA
    assert config["run_dir"] == m["run_dir"] and config["model"] == "expl_ensemble"
    for key, value in _test_numbers(m).items():
        assert summary[key] == pytest.approx(value, rel=1e-6), key
    assert summary["test/kld_at_k"] == pytest.approx(m["test/kld_at_k"])
    assert "train/loss" in summary  # Lightning's values while training


def test_missing_tracker_package_is_one_error_line(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    from mimic_runner.config import preflight
    from mimic_runner.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"logger=wandb needs the 'wandb' package; install the "
                                        r"tracking extra"):
        preflight(["logger=wandb"])

"""Launcher options: GPU slots, plugin checks, config composition, submitit and joblib runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import TINY, run_cli
from omegaconf import OmegaConf

from mimic_runner.config import check_launcher_plugin, run_dirname
from mimic_runner.errors import UserError
from mimic_runner.training.local_launcher import cpu_threads_per_job, gpu_slot_order, local_n_jobs

# -- pure logic ---------------------------------------------------------------------------------

def test_one_gpu_per_job_round_robin() -> None:
    firsts = [gpu_slot_order(j, n_gpus=4, jobs_per_gpu=1)[0] for j in range(8)]
    assert [g for g, _ in firsts] == [0, 1, 2, 3, 0, 1, 2, 3]  # job number modulo GPU count
    # Every slot is tried once, the first choice first.
    order = gpu_slot_order(5, n_gpus=4, jobs_per_gpu=1)
    assert order[0] == (1, 0) and sorted(order) == [(g, 0) for g in range(4)]


def test_jobs_per_gpu_packs_jobs() -> None:
    firsts = [gpu_slot_order(j, n_gpus=2, jobs_per_gpu=3)[0] for j in range(6)]
    assert firsts == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]  # 6 jobs, 3 per GPU
    one_gpu = {gpu_slot_order(j, n_gpus=1, jobs_per_gpu=4)[0] for j in range(4)}
    assert one_gpu == {(0, k) for k in range(4)}
    assert gpu_slot_order(3, n_gpus=0, jobs_per_gpu=2) == []  # CPU only: no slot


def test_local_n_jobs_and_threads() -> None:
    assert local_n_jobs(None, jobs_per_gpu=1, n_gpus=4) == 4
    assert local_n_jobs(None, jobs_per_gpu=3, n_gpus=2) == 6
    assert local_n_jobs(None, jobs_per_gpu=3, n_gpus=0) == 1
    assert local_n_jobs(5, jobs_per_gpu=1, n_gpus=8) == 5
    with pytest.raises(UserError, match=r"launcher\.n_jobs"):
        local_n_jobs(0, jobs_per_gpu=1, n_gpus=1)
    assert cpu_threads_per_job(16, 4) == 4 and cpu_threads_per_job(2, 4) == 1


def test_missing_launcher_plugin_is_a_clear_user_error() -> None:
    with pytest.raises(UserError, match=r"hydra-joblib-launcher.*mimic-runner\[launchers\]"):
        check_launcher_plugin(["-m", "launcher=local"], find_spec=lambda name: None)
    with pytest.raises(UserError, match="hydra-submitit-launcher"):
        check_launcher_plugin(["launcher=slurm"], find_spec=lambda name: None)
    check_launcher_plugin(["launcher=serial", "model=baseline"], find_spec=lambda name: None)
    check_launcher_plugin(["launcher=local"])  # installed here


def test_missing_plugin_exits_2_without_traceback(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['hydra_plugins.hydra_joblib_launcher'] = None\n"
            "from mimic_runner.cli.run import main\n"
            "sys.argv = ['mimic-run', '-m', 'launcher=local']\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: launcher=local needs")
    assert "Traceback" not in r.stderr


def test_launcher_keys_stay_out_of_run_folder_names() -> None:
    name = run_dirname("hydra.launcher.partition=gpu,launcher.n_jobs=4,model=baseline,"
                        "model.decoder_channels=[8,4],seed=1")
    assert name == "model=baseline,model.decoder_channels=_8,4_,seed=1"
    assert run_dirname("launcher.jobs_per_gpu=2") == "defaults"


# -- configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("option,target", [
    ("serial", "BasicLauncher"), ("local", "JoblibLauncher"),
    ("slurm", "SlurmLauncher"), ("submitit_local", "LocalLauncher")])
def test_launcher_options_compose(compose, option: str, target: str) -> None:  # type: ignore[no-untyped-def]
    cfg = compose(f"launcher={option}", hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.launcher.name == option
    assert cfg.hydra.callbacks.sweep_summary._target_.endswith("SweepSummary")


def test_slurm_settings_come_from_the_launcher_keys(compose) -> None:  # type: ignore[no-untyped-def]
    cfg = compose("launcher=slurm", "launcher.partition=gpu", "launcher.timeout_min=90",
                  "launcher.gpus_per_node=2", "launcher.cpus_per_task=6", "launcher.mem_gb=40",
                  "launcher.array_parallelism=5", hydra=True)
    hl = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(hl, dict)
    assert (hl["partition"], hl["timeout_min"], hl["gpus_per_node"], hl["cpus_per_task"],
            hl["mem_gb"], hl["array_parallelism"]) == ("gpu", 90, 2, 6, 40, 5)
    assert hl["max_num_timeout"] == 3 and cfg.launcher.resume is True


def test_local_n_jobs_from_config(compose) -> None:  # type: ignore[no-untyped-def]
    assert compose("launcher=local", "launcher.n_jobs=3", hydra=True).hydra.launcher.n_jobs == 3
    cfg = compose("launcher=local", "launcher.jobs_per_gpu=2", hydra=True)
    import torch

    from mimic_runner.training.local_launcher import available_cpus

    # Two per GPU; without one, a job per core (launcher.cpu_threads_per_job: 1).
    n_gpus = torch.cuda.device_count()
    assert cfg.hydra.launcher.n_jobs == (2 * n_gpus if n_gpus else available_cpus())


# -- real multiruns -----------------------------------------------------------------------------

def _finished(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("runs/*/*/metrics.json"))]


@pytest.mark.slow
def test_submitit_local_runs_jobs_in_subprocesses(tmp_path: Path) -> None:
    r = run_cli(["mimic-run", "-m", "launcher=submitit_local", "trainer=smoke", *TINY,
                 "seed=1,2", "sweep_name=sub"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(m["seed"] for m in _finished(tmp_path)) == [1, 2]
    assert (tmp_path / "runs" / "sub" / ".submitit").is_dir()  # the pickled jobs ran there
    assert "2 trained" in r.stderr


@pytest.mark.slow
def test_local_joblib_launcher_runs_jobs_in_parallel(tmp_path: Path) -> None:
    args = ["mimic-run", "-m", "launcher=local", "launcher.n_jobs=2", "trainer=smoke", *TINY,
            "seed=1,2", "sweep_name=loc"]
    r = run_cli(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(m["seed"] for m in _finished(tmp_path)) == [1, 2]
    # launcher.* overrides are not in the folder names: a serial re-run finds the same runs.
    r = run_cli(["mimic-run", "-m", "trainer=smoke", *TINY, "seed=1,2", "sweep_name=loc"],
                cwd=tmp_path)
    assert r.returncode == 0 and "0 trained, 2 skipped" in r.stderr

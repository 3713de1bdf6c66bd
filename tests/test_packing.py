"""Packed CPU sweeps (launcher=local without a GPU) and the CPU channels-last default."""

from __future__ import annotations

import os

import pytest
import torch

from mimic_runner.config import preflight
from mimic_runner.errors import UserError
from mimic_runner.training import local_launcher
from mimic_runner.training.builders import DataShape, build_module, default_channels_last
from mimic_runner.training.local_launcher import available_cpus, local_job_resources, local_n_jobs


def test_cores_are_packed_threads_per_job_to_a_job() -> None:
    assert local_n_jobs(None, 1, n_gpus=0, threads_per_job=1, n_cpus=2) == 2
    assert local_n_jobs(None, 1, n_gpus=0, threads_per_job=1, n_cpus=16) == 16
    assert local_n_jobs(None, 1, n_gpus=0, threads_per_job=3, n_cpus=16) == 5
    assert local_n_jobs(None, 1, n_gpus=0, threads_per_job=32, n_cpus=16) == 1  # at least one
    assert local_n_jobs(None, 1, n_gpus=0, threads_per_job=None, n_cpus=16) == 1  # no packing
    assert local_n_jobs(4, 1, n_gpus=0, threads_per_job=1, n_cpus=16) == 4  # n_jobs decides
    assert local_n_jobs(None, 2, n_gpus=3, threads_per_job=1, n_cpus=16) == 6  # GPUs decide


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"n_jobs": 0}, "launcher.n_jobs=0"), ({"n_jobs": "two"}, "launcher.n_jobs=two"),
    ({"threads_per_job": 0}, "launcher.cpu_threads_per_job=0"),
    ({"threads_per_job": 1.5}, "launcher.cpu_threads_per_job=1.5"),
    ({"threads_per_job": True}, "launcher.cpu_threads_per_job=True"),
    ({"jobs_per_gpu": 0}, "launcher.jobs_per_gpu=0"),
])
def test_bad_launcher_values_name_their_key(kwargs: dict, key: str) -> None:
    args = {"n_jobs": None, "jobs_per_gpu": 1, "threads_per_job": 1, **kwargs}
    with pytest.raises(UserError, match=f"^{key}: use a positive whole number"):
        local_n_jobs(args["n_jobs"], args["jobs_per_gpu"], n_gpus=0,
                     threads_per_job=args["threads_per_job"], n_cpus=4)


def test_cores_come_from_the_affinity(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert available_cpus() == 3
    assert local_n_jobs(None, 1, n_gpus=0, threads_per_job=1) == 3


def test_launcher_local_config_packs_one_job_per_core(compose) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    n_gpus = torch.cuda.device_count()
    cfg = compose("launcher=local", hydra=True)
    assert cfg.launcher.cpu_threads_per_job == 1
    assert cfg.hydra.launcher.n_jobs == (n_gpus if n_gpus else available_cpus())
    if not n_gpus:
        cfg = compose("launcher=local", "launcher.cpu_threads_per_job=null", hydra=True)
        assert cfg.hydra.launcher.n_jobs == 1


def test_bad_launcher_value_is_one_line_before_hydra() -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    with pytest.raises(UserError, match=r"^launcher\.cpu_threads_per_job=0: use a positive"):
        preflight(["-m", "launcher=local", "launcher.cpu_threads_per_job=0", "seed=1,2"])


def test_each_packed_job_gets_its_share_of_threads(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(local_launcher, "available_cpus", lambda: 4)
    before = torch.get_num_threads()
    try:
        with local_job_resources(0, n_jobs=4, use_gpus=False, jobs_per_gpu=1) as gpu:
            assert gpu is None and torch.get_num_threads() == 1
        with local_job_resources(1, n_jobs=2, use_gpus=False, jobs_per_gpu=1):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("overrides", "expected"), [
    ((), True),                                                      # baseline, small_cnn
    (("model=expl_ensemble",), True),                               # auto = loop on the CPU
    (("model=normal_ensemble", "model.ensemble_impl=loop"), True),
    (("model=expl_ensemble", "model.ensemble_impl=wide"), False),   # NHWC slows `wide`
    (("model=improved_unet",), False),                              # not measured
    (("backbone=resnet18",), False),                                # ~1.05x only
    (("trainer=gpu",), False),                                      # GPUs: not measured
    (("++model.channels_last=false",), False),                      # explicit wins
])
def test_channels_last_default_only_on_cpu_small_cnn(compose, overrides, expected) -> None:  # type: ignore[no-untyped-def]
    cfg = compose(*overrides)
    assert default_channels_last(cfg).get("channels_last", False) is expected


def test_channels_last_default_reaches_the_weights(compose) -> None:  # type: ignore[no-untyped-def]
    on = build_module(compose("model=normal_ensemble", "model.ensemble_size=2"), DataShape())
    off = build_module(compose("model=normal_ensemble", "model.ensemble_size=2",
                               "++model.channels_last=false"), DataShape())
    w_on = _second_conv(on)
    w_off = _second_conv(off)
    if torch.cuda.is_available():  # trainer.accelerator=auto picks the GPU: default off
        assert w_on.is_contiguous()
    else:
        assert w_on.is_contiguous(memory_format=torch.channels_last) and not w_on.is_contiguous()
    assert w_off.is_contiguous()


def _second_conv(module: torch.nn.Module) -> torch.Tensor:
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[1].weight  # the first has one input channel: NCHW and NHWC strides agree

"""`make gpu-check` on a machine without CUDA: one line, exit 0; and its summary, built from a
real (tiny, CPU) mimic-bench result, says what BENCHMARKS.md's pending rows need."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@no_cuda
def test_script_without_cuda_prints_one_line_and_exits_0(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "g")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [_script().NO_CUDA]
    assert not (tmp_path / "g").exists()  # nothing written


@no_cuda
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_without_cuda() -> None:
    # The Makefile's environment is this one; `make test ARGS=...` passes ARGS down through
    # MAKEFLAGS, so the nested make gets its own (empty) ARGS.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["VIRTUAL_ENV"] = sys.prefix
    r = subprocess.run(["make", "-s", "gpu-check", "ARGS="], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == _script().NO_CUDA


def test_plan_fits_in_ten_minutes(tmp_path: Path) -> None:
    gc = _script()
    steps = gc.plan(tmp_path)
    assert sum(s.timeout for s in steps) <= 620  # and --budget (560 s) caps the whole
    assert [s.name for s in steps] == ["pytest", "table1_run", "bench_ensembles",
                                       "bench_gradcam", "bench_mfu"]
    table1 = " ".join(steps[1].argv)
    assert "model=expl_ensemble" in table1 and "trainer=gpu" in table1 and "seed=1735" in table1
    assert all("--devices cuda" in " ".join(s.argv) for s in steps[2:])


def test_summary_from_a_real_bench_result(tmp_path: Path) -> None:
    """The summary's parsing on mimic-bench's real JSON (a tiny CPU run stands in for CUDA)."""
    gc = _script()
    bench = Path(sys.executable).parent / "mimic-bench"
    common = ["--devices", "cpu", "--threads", "1", "--repeats", "2", "--warmup", "0"]
    subprocess.run([str(bench), *common, "--backbones", "small_cnn", "--models",
                    "normal_ensemble,expl_ensemble", "--sizes", "2", "--impls", "loop,batched",
                    "--sections", "steps,data,mfu", "--batch-size", "2", "--image-size", "32",
                    "--data-epochs", "1", "--data-override", "data.synth.params.n=240",
                    "--out", str(tmp_path / "bench_ensembles.json")],
                   check=True, capture_output=True, timeout=300)
    subprocess.run([str(bench), *common, "--sections", "gradcam", "--cam-batch", "2",
                    "--cam-size", "32", "--out", str(tmp_path / "bench_gradcam.json")],
                   check=True, capture_output=True, timeout=300)
    shutil.copy(tmp_path / "bench_ensembles.json", tmp_path / "bench_mfu.json")
    steps = gc.plan(tmp_path)
    for s in steps:
        s.rc, s.seconds = 0, 1.0
    (tmp_path / "pytest.log").write_text("..\n2 passed, 1 skipped, 640 deselected in 9.1s\n")
    steps[0].log = "pytest.log"
    steps[1].rc, steps[1].timed_out = -15, True  # the Table 1 run ran out of time
    res = gc.summarise(steps, tmp_path, "NVIDIA H200", {"date": "today", "torch": "2"})
    assert res["pytest"] == {"passed": 2, "skipped": 1, "deselected": 640}
    assert "table1_run" not in res
    assert {r["ratio"] for r in res["expl_over_normal"]} == {"expl/normal"}
    assert {r["ratio"] for r in res["loop_over_batched"]} == {"loop/batched"}
    assert res["gradcam"]["speedup"] > 0 and res["data"]["consumers"]
    assert len(res["mfu"]) == 4 and all(r["gflop"] > 0 for r in res["mfu"])
    md = gc.markdown(res)
    for text in ("# GPU check: NVIDIA H200", "| table1_run (one Table 1 run at full settings) | "
                 "timed out |", "expl_ensemble / normal_ensemble step", "loop / batched step",
                 "## Grad-CAM", "## Data loading", "## Model FLOPs utilisation", "2 passed"):
        assert text in md, text

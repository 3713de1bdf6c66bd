"""A run killed part-way and resumed with ``resume=true`` ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import TINY, run_cli

# Four short epochs: the kill lands after epoch 1, so three epochs run after the restart.
ARGS = ["trainer=smoke", "trainer.max_epochs=4", *TINY]


def _run_dir(root: Path) -> Path:
    dirs = [p.parent.parent for p in root.glob("*/.hydra/config.yaml")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _kill_after_first_checkpoint(args: list[str], cwd: Path, timeout: float = 600) -> None:
    """Start ``mimic-run``, SIGKILL it as soon as a ``last.ckpt`` exists (polled)."""
    exe = Path(sys.executable).parent / "mimic-run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not any(cwd.glob("runs/*/checkpoints/last.ckpt")):
            if proc.poll() is not None:
                pytest.fail(f"mimic-run ended before its first checkpoint: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within the timeout")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.slow
@pytest.mark.parametrize("model", [
    ["model=baseline", "seed=11"],
    ["model=expl_ensemble", "model.ensemble_size=2", "seed=12"],
], ids=["baseline", "expl_ensemble"])
def test_killed_run_resumes_to_the_same_metrics(tmp_path: Path, model: list[str]) -> None:
    args = [*ARGS, *model]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()

    r = run_cli(["mimic-run", *args], cwd=whole)
    assert r.returncode == 0, r.stderr[-3000:]
    expected = json.loads((_run_dir(whole / "runs") / "metrics.json").read_text())

    _kill_after_first_checkpoint(args, killed)
    run_dir = _run_dir(killed / "runs")
    assert not (run_dir / "metrics.json").exists(), "killed too late: the run had finished"

    r = run_cli(["mimic-run", *args, "resume=true"], cwd=killed)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["resumed"] is True and expected["resumed"] is False
    assert got["epochs"] == expected["epochs"]

    keys = sorted(k for k in expected if k.startswith("test/"))
    assert keys and keys == sorted(k for k in got if k.startswith("test/"))
    for k in keys:
        assert got[k] == pytest.approx(expected[k], abs=1e-6, rel=1e-6), k

    # Resuming a finished run trains nothing.
    r = run_cli(["mimic-run", *args, "resume=true"], cwd=killed)
    assert r.returncode == 0 and "skip" in r.stderr


def test_merge_epoch_logs_keeps_the_history_before_the_resumed_epoch() -> None:
    from mimic_runner.training.resume import merge_epoch_logs

    earlier = [{"epoch": "0", "val/acc": "0.1"}, {"epoch": "1", "val/acc": "0.2"},
               {"epoch": "", "note": "no epoch"}]
    resumed = [{"epoch": "1", "val/acc": "0.25"}, {"epoch": "2", "test/acc": "0.3"}]
    assert merge_epoch_logs(earlier, resumed) == [{"epoch": "0", "val/acc": "0.1"}, *resumed]
    assert merge_epoch_logs([], resumed) == resumed

"""``launcher=slurm`` against a real one-node SLURM cluster started for these tests.

The cluster (``scripts/slurm_local.sh``, see ``slurm_cluster.py``) needs root and Debian's SLURM
packages; without them every test here skips and says why. Everything is black-box: ``mimic-run``
as a user runs it, then the run folders (metrics.json, failed.json), the sweep summary on stderr
and SLURM's own accounting (``sacct``).

Every job gets one CPU and runs torch on one thread (OMP_NUM_THREADS, exported to the jobs by
sbatch): the same thread count in every run makes equal overrides give equal metrics.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import slurm_cluster
import yaml
from cli_helpers import TINY, run_cli

pytestmark = pytest.mark.slow

# One CPU and a little memory per job: two jobs share a 2-core node. No GPU on the node.
SLURM = ["launcher=slurm", "launcher.gpus_per_node=0", "launcher.cpus_per_task=1",
         "launcher.mem_gb=1"]
SMALL = ["trainer=smoke", *TINY, "data.image_size=64"]
# Long enough (~0.15 s an epoch on one thread) that a requeue sent when the first checkpoint
# appears lands mid-training, with seconds to spare on a loaded machine.
REQUEUE_EPOCHS = 30
TIMEOUT = 300  # seconds for one mimic-run command; a sweep here takes well under a minute


@pytest.fixture(scope="module")
def slurm() -> Iterator[slurm_cluster.SlurmCluster]:
    """A fresh cluster for this module; every daemon it started is stopped at the end."""
    mode = slurm_cluster.mode()
    if mode == "off":
        pytest.skip("MIMIC_TEST_SLURM=off")
    reason = slurm_cluster.unavailable()
    if reason:
        if mode == "require":
            pytest.fail(f"MIMIC_TEST_SLURM=require, but no SLURM cluster can start: {reason}")
        pytest.skip(f"no local SLURM cluster: {reason}")
    try:
        cluster = slurm_cluster.start()
    except slurm_cluster.CannotStart as exc:
        if mode == "require":
            pytest.fail(str(exc))
        pytest.skip(f"the local SLURM cluster did not start: {exc}")
    print(f"\nSLURM cluster up in {cluster.start_seconds:.1f} s ({cluster.folder})")
    try:
        yield cluster
    finally:
        print(slurm_cluster.stop(cluster))


def _env(slurm: slurm_cluster.SlurmCluster) -> dict[str, str]:
    return {**slurm.env, "OMP_NUM_THREADS": "1"}


def _job_id(run_dir: Path) -> str:
    """The SLURM job id (``<array>_<task>``) Hydra recorded for a run of a submitit sweep."""
    hydra_cfg = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())
    return str(hydra_cfg["hydra"]["job"]["id"])


def _job_log(sweep_dir: Path, job_id: str) -> str:
    """The job's stdout and stderr (submitit appends every attempt of a requeued job)."""
    logs = sorted((sweep_dir / ".submitit" / job_id).glob("*_log.*"))
    return "\n".join(p.read_text(errors="replace") for p in logs)


def _attempts(slurm: slurm_cluster.SlurmCluster, job_id: str) -> list[str]:
    """States of every start of a job (``sacct --duplicates``: a requeued job shows a
    ``REQUEUED`` record per requeue before its last one)."""
    r = slurm.run("sacct", "-X", "-n", "-P", "--duplicates", "-j", job_id, "-o", "JobID,State")
    return [line.split("|")[1] for line in r.stdout.splitlines()
            if line.split("|")[0] == job_id]


def _sacct_states(slurm: slurm_cluster.SlurmCluster, job_id: str,
                  wait_for: set[str], timeout: float = 30) -> list[str]:
    """:func:`_attempts`, waited for until the last one is in ``wait_for`` (slurmdbd learns of
    a job's end a moment after the sweep command has its result)."""
    deadline = time.monotonic() + timeout
    while True:
        states = _attempts(slurm, job_id)
        if (states and states[-1] in wait_for) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def _said(stderr: str) -> str:
    """stderr with every run of whitespace made one space: the console may wrap a status line."""
    return " ".join(stderr.split())


def _test_metrics(m: dict) -> dict[str, float]:
    return {k: v for k, v in m.items() if k.startswith("test/")}


@dataclass
class Sweep:
    """A ``mimic-run -m`` command that ran to its end, with ``action`` applied to one of its
    runs (``target``) as soon as that run's first ``checkpoints/last.ckpt`` existed."""

    root: Path
    sweep_dir: Path
    args: list[str]
    result: subprocess.CompletedProcess[str]
    seconds: float
    target: Path
    target_job: str  # <array>_<task>, as Hydra recorded it before any later sweep


def _start_mimic_run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "mimic-run"
    out = (cwd / "stdout.txt").open("w")
    err = (cwd / "stderr.txt").open("w")
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=out, stderr=err, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


def _sweep_with_action(slurm: slurm_cluster.SlurmCluster, root: Path, args: list[str],
                       sweep_name: str, target_glob: str, action: list[str]) -> Sweep:
    """Run the sweep; once the run folder matching ``target_glob`` has its first checkpoint,
    run the SLURM command ``action`` with ``{job}`` replaced by that run's job id."""
    sweep_dir = root / "runs" / sweep_name
    t0 = time.monotonic()
    proc = _start_mimic_run([*args, f"sweep_name={sweep_name}"], root, _env(slurm))
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (ckpts := list(sweep_dir.glob(f"{target_glob}/checkpoints/last.ckpt"))):
            if proc.poll() is not None:
                pytest.fail("mimic-run ended before the first checkpoint:\n"
                            + (root / "stderr.txt").read_text()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within the timeout\n" + slurm.log_tail())
            time.sleep(0.05)
        target = ckpts[0].parent.parent
        job = _job_id(target)
        slurm.run(*[a.replace("{job}", job) for a in action])
        assert not (target / "metrics.json").exists(), (
            f"{target.name} finished before `{' '.join(action)}` reached it: make it longer")
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seconds = time.monotonic() - t0
    print(f"\nsweep {sweep_name}: {seconds:.1f} s")
    result = subprocess.CompletedProcess(args, proc.returncode, (root / "stdout.txt").read_text(),
                                         (root / "stderr.txt").read_text())
    return Sweep(root, sweep_dir, [*args, f"sweep_name={sweep_name}"], result, seconds, target,
                 job)


@dataclass
class RequeuedSweep(Sweep):
    reference: Path = Path()  # the uninterrupted run
    reference_job: str = ""


@pytest.fixture(scope="module")
def requeued_sweep(slurm: slurm_cluster.SlurmCluster,
                   tmp_path_factory: pytest.TempPathFactory) -> RequeuedSweep:
    """A 2-run sweep through ``launcher=slurm``: two runs with equal settings (only a ``+tag``
    tells their folders apart), one of them requeued with ``scontrol requeue`` as soon as its
    first ``checkpoints/last.ckpt`` exists. The other is the uninterrupted reference."""
    root = tmp_path_factory.mktemp("slurm-requeue")
    args = ["-m", *SLURM, *SMALL, f"trainer.max_epochs={REQUEUE_EPOCHS}", "seed=7",
            "+tag=reference,requeued"]
    sweep = _sweep_with_action(slurm, root, args, "rq", "*tag=requeued*",
                               ["scontrol", "requeue", "{job}"])
    (reference,) = [d for d in sweep.sweep_dir.glob("*tag=reference*") if d.is_dir()]
    return RequeuedSweep(**vars(sweep), reference=reference, reference_job=_job_id(reference))


def test_a_sweep_is_one_array_job_and_both_runs_finish(
        slurm: slurm_cluster.SlurmCluster, requeued_sweep: RequeuedSweep) -> None:
    sweep = requeued_sweep
    r = sweep.result
    assert r.returncode == 0, r.stderr[-3000:]
    ids = sorted([sweep.reference_job, sweep.target_job])
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_0", f"{array}_1"], ids  # one array job, one task per run
    for d, job in ((sweep.reference, sweep.reference_job), (sweep.target, sweep.target_job)):
        assert (d / "metrics.json").is_file(), d
        assert not (d / "failed.json").exists(), d
        assert _sacct_states(slurm, job, {"COMPLETED"})[-1] == "COMPLETED"
    assert re.search(r"runs/rq: 2 runs: 2 trained, 0 skipped", _said(r.stderr)), r.stderr[-3000:]
    assert "failed" not in r.stderr and "incomplete" not in r.stderr, r.stderr[-3000:]


def test_a_requeued_job_resumes_from_its_checkpoint_to_the_same_metrics(
        slurm: slurm_cluster.SlurmCluster, requeued_sweep: RequeuedSweep) -> None:
    sweep = requeued_sweep
    assert sweep.result.returncode == 0, sweep.result.stderr[-3000:]
    states = _sacct_states(slurm, sweep.target_job, {"COMPLETED"})
    assert states == ["REQUEUED", "COMPLETED"], states  # SLURM started it twice
    assert _sacct_states(slurm, sweep.reference_job, {"COMPLETED"}) == ["COMPLETED"]
    log = _job_log(sweep.sweep_dir, sweep.target_job)
    assert "resuming from" in log and "last.ckpt" in log, log[-3000:]

    expected = json.loads((sweep.reference / "metrics.json").read_text())
    got = json.loads((sweep.target / "metrics.json").read_text())
    assert expected["resumed"] is False and got["resumed"] is True
    assert got["epochs"] == expected["epochs"] == REQUEUE_EPOCHS
    want = _test_metrics(expected)
    assert want and sorted(_test_metrics(got)) == sorted(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6, rel=1e-6), k


def test_a_second_sweep_skips_the_finished_runs(
        slurm: slurm_cluster.SlurmCluster, requeued_sweep: RequeuedSweep) -> None:
    sweep = requeued_sweep
    assert sweep.result.returncode == 0, sweep.result.stderr[-3000:]
    runs = (sweep.reference, sweep.target)
    before = {d: (d / "metrics.json").stat().st_mtime_ns for d in runs}
    t0 = time.monotonic()
    r = run_cli(["mimic-run", *sweep.args], cwd=sweep.root, timeout=TIMEOUT, env=_env(slurm))
    print(f"\nsecond sweep: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 runs: 0 trained, 2 skipped" in _said(r.stderr), r.stderr[-3000:]
    assert {d: (d / "metrics.json").stat().st_mtime_ns for d in runs} == before
    # Both jobs went through SLURM again, as a new array job, and trained nothing.
    jobs = sorted(_job_id(d) for d in runs)
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_0", f"{array}_1"] and array != sweep.target_job.split("_")[0]
    for job in jobs:
        assert "metrics.json exists" in _job_log(sweep.sweep_dir, job)
        assert "resuming from" not in _job_log(sweep.sweep_dir, job)


def test_a_job_past_its_time_limit_is_requeued_then_fails_and_the_sweep_goes_on(
        slurm: slurm_cluster.SlurmCluster, tmp_path: Path) -> None:
    """A job whose time limit comes near gets SLURM's warning signal (sbatch --signal, sent by
    submitit's sbatch script 120 s before the limit; slurmctld checks every 30 s). submitit
    requeues it, counting a time-out, and the requeued job resumes from its last.ckpt. Past
    ``launcher.max_num_timeout`` time-outs the next warning ends the run with failed.json
    ("timed-out too many times"); the sweep goes on with the other runs and exits 1.

    The limit is cut to 1 minute (``scontrol update``) once training runs: submitted with
    ``launcher.timeout_min=1`` the warning would be due at once, and could reach a job before
    Python had set its signal handlers (SIGUSR2's default action kills the job, result-less)."""
    args = ["-m", *SLURM, *SMALL, "launcher.timeout_min=10", "launcher.max_num_timeout=1",
            "trainer.max_epochs=2,100000", "seed=8"]
    sweep = _sweep_with_action(slurm, tmp_path, args, "tl", "*trainer.max_epochs=100000*",
                               ["scontrol", "update", "JobId={job}", "TimeLimit=1"])
    r = sweep.result
    assert r.returncode == 1, r.stderr[-3000:]  # a run failed; the exit status says so
    long = sweep.target
    (short,) = sweep.sweep_dir.glob("*trainer.max_epochs=2,*")
    assert (short / "metrics.json").is_file() and not (short / "failed.json").exists()
    assert not (long / "metrics.json").exists()
    if not (long / "failed.json").exists() and "timed-out too many times" in _job_log(
            sweep.sweep_dir, sweep.target_job):
        # submitit raises its "timed-out too many times" from its SIGUSR2 handler; when that
        # signal lands while its SIGCONT handler is logging, logging's emit() swallows the
        # exception, the job trains on and SLURM kills it at the limit without a result.
        pytest.xfail("submitit's time-out exception was swallowed by logging (a signal race "
                     "in submitit); the run was stopped by SLURM instead")
    failed = json.loads((long / "failed.json").read_text())
    assert "timed-out too many times" in failed["error"], failed["error"]
    assert "2 runs: 1 trained, 0 skipped (finished before), 1 failed" in _said(r.stderr), (
        r.stderr[-3000:])

    # Requeued once (max_num_timeout=1), resumed from its checkpoint, then stopped for good.
    assert _sacct_states(slurm, sweep.target_job, {"COMPLETED"}) == ["REQUEUED", "COMPLETED"]
    log = _job_log(sweep.sweep_dir, sweep.target_job)
    assert "resuming from" in log and "last.ckpt" in log, log[-3000:]

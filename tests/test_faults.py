"""Fault injection (issue 14): every fault ends in one ``error:`` line, a non-zero exit, no
traceback, and leaves no partial or changed file behind.

One tiny smoke run is trained once for the module and copied where a test changes files.
CLI probes run the installed console scripts (as a user would, nothing repo-relative) or, where
only the checks before any work are exercised, the entry point in-process (no start-up cost).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli

from mimic_runner.errors import RunInUse, UserError

ARGS = ["trainer=smoke", "data.synth.params.n=240", "data.image_size=64", "seed=3"]
EXE = Path(sys.executable).parent


def one_error_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The probe's last stderr line, checked: ``error: ...``, exit ``code``, no traceback."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    return last


def in_process_error(capsys: pytest.CaptureFixture[str], main, *argv: str) -> str:  # type: ignore[no-untyped-def]
    """Run a CLI entry point in-process expecting a user error: exit 2, one stderr line."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def only_run(cwd: Path) -> Path:
    (run,) = [p.parent.parent for p in (cwd / "runs").glob("*/.hydra/config.yaml")]
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``mimic-run trainer=smoke`` run folder (runs/<name>/ under its own cwd)."""
    cwd = tmp_path_factory.mktemp("trained")
    proc = run_cli(["mimic-run", *ARGS], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run(cwd)


def copy_run(run: Path, cwd: Path) -> Path:
    """The run copied to ``cwd/runs/<name>``, where the same command line finds it."""
    dest = cwd / "runs" / run.name
    shutil.copytree(run, dest)
    return dest


# -- 1. a failed resume changes nothing ----------------------------------------------------------


def test_truncated_checkpoint_resume_changes_nothing(trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path)
    (run / "metrics.json").unlink()  # an interrupted run: it has not finished
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (run / "failed.json").write_text("{}\n")  # an earlier attempt's record stays too
    before = snapshot(run)
    csv_before = (run / "csv" / "metrics.csv").read_bytes()

    err = one_error_line(run_cli(["mimic-run", *ARGS, "resume=true"], cwd=tmp_path))
    assert "last.ckpt: cannot resume, the checkpoint is unreadable" in err
    assert "epoch001.ckpt" in err and "start over" in err and "resume=true" in err
    assert (run / "csv" / "metrics.csv").read_bytes() == csv_before
    assert snapshot(run) == before


def test_the_job_checks_the_checkpoint_before_touching_the_folder(trained: Path, tmp_path: Path,
                                                                  compose) -> None:  # type: ignore[no-untyped-def]
    """The same check inside the job (a sweep's jobs skip the command-line one)."""
    from mimic_runner.rundir import RunDir
    from mimic_runner.training.resume import resume_checkpoint

    run = copy_run(trained, tmp_path)
    rd = RunDir(run)
    cfg = compose(*ARGS, "resume=true")
    assert resume_checkpoint(cfg, rd) == str(rd.last_checkpoint)  # a good one resumes
    for damage in (b"", b"not a checkpoint at all", rd.last_checkpoint.read_bytes()[:-100]):
        rd.last_checkpoint.write_bytes(damage)
        before = snapshot(run)
        with pytest.raises(UserError, match="cannot resume, the checkpoint is unreadable"):
            resume_checkpoint(cfg, rd)
        assert snapshot(run) == before


def test_history_is_put_back_when_a_resumed_run_fails(tmp_path: Path) -> None:
    from mimic_runner.rundir import RunDir
    from mimic_runner.training.resume import RunHistory

    rd = RunDir(tmp_path)
    rd.csv_log.parent.mkdir()
    original = b"epoch,val/acc\r\n0,0.5\r\n1,0.6\r\n"
    rd.csv_log.write_bytes(original)
    history = RunHistory(rd)
    rd.csv_log.unlink()  # what Lightning's CSV logger does when it starts
    history.restore()
    assert rd.csv_log.read_bytes() == original
    rd.csv_log.write_text("epoch,val/acc\n1,0.7\n2,0.8\n")  # the resumed epochs
    history.restore()
    assert rd.csv_log.read_text().splitlines() == ["epoch,val/acc", "0,0.5", "1,0.7", "2,0.8"]


# -- 2. atomic outputs, full disk ---------------------------------------------------------------


def _no_room(*_: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*.tmp")]


def test_checkpoint_writer_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from mimic_runner import io as mio
    from mimic_runner.training.callbacks import AtomicCheckpointIO

    ckpt_io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt_io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
    good = path.read_bytes()
    monkeypatch.setattr(mio, "_fsync", _no_room)  # the disk fills while the new one is written
    with pytest.raises(OSError) as exc:
        ckpt_io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, path)
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(path)
    assert path.read_bytes() == good and no_temp_files(tmp_path)


def test_every_run_folder_writer_leaves_no_partial_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mimic_runner import io as mio
    from mimic_runner.rundir import RunDir

    monkeypatch.setattr(mio, "_fsync", _no_room)
    rd = RunDir(tmp_path)
    writes = [
        (rd.metrics, lambda: rd.write_metrics({"test/acc": 0.5})),
        (rd.failed, lambda: rd.write_failure({"error": "x"})),
        (rd.explanations, lambda: rd.write_explanations(
            maps=np.zeros((2, 8, 8)), labels=np.zeros(2), probabilities=np.ones((2, 3)) / 3,
            ids=np.asarray(["a", "b"]), class_names=["a", "b", "c"], explain_target="pred",
            model="baseline")),
        (rd.member_cams, lambda: rd.add_member_cams(1, np.zeros((2, 8, 8)), None)),
    ]
    for path, write in writes:
        with pytest.raises(OSError) as exc:
            write()
        assert exc.value.filename == str(path) and not path.exists()
    assert no_temp_files(tmp_path)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics are Linux's")
def test_full_disk_during_training_is_one_line(trained: Path, tmp_path: Path) -> None:
    """A real kernel refusal: a file-size limit below a checkpoint's size makes its write fail
    (EFBIG, as ENOSPC on a full disk). The data set is already in the cache."""
    limit = 300_000  # bytes: more than the logs and the .hydra files, less than a checkpoint
    assert (trained / "checkpoints" / "last.ckpt").stat().st_size > limit

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([str(EXE / "mimic-run"), *ARGS], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, preexec_fn=limit_file_size,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err = one_error_line(proc)
    assert ".ckpt: cannot write (file too large" in err and "resume=true" in err
    run = only_run(tmp_path)
    assert not list(run.rglob("*.ckpt")) and no_temp_files(run)
    assert not (run / "metrics.json").exists()


def test_full_disk_in_mimic_explain_is_one_line(trained: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from mimic_runner import io as mio
    from mimic_runner.cli.explain import main

    monkeypatch.setattr(mio, "_fsync", _no_room)
    err = in_process_error(capsys, main, "global", str(trained), "--out", str(tmp_path))
    assert err == (f"error: {tmp_path / 'global_explanations.h5'}: cannot write (no space left "
                   "on the device); no partial file was left. Free some space or choose "
                   "another output folder")
    assert not list(tmp_path.iterdir())


# -- 3. one run per folder ----------------------------------------------------------------------

HOLD = """
import sys, time
from mimic_runner.rundir import RunDir
with RunDir(sys.argv[1]).locked():
    print("locked", flush=True)
    time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_folder_in_use_is_refused_with_the_holders_pid(trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path)
    (run / "metrics.json").unlink()
    before = snapshot(run)
    holder = hold_lock(run)
    try:
        err = one_error_line(run_cli(["mimic-run", *ARGS], cwd=tmp_path))
        assert f"{run.relative_to(tmp_path)}: another run is using this folder (pid " \
               f"{holder.pid} on " in err
        # Inside the job too (two runs that passed the command-line check together).
        from mimic_runner.rundir import RunDir

        with pytest.raises(RunInUse, match=f"pid {holder.pid}"), RunDir(run).locked():
            pass
    finally:
        holder.kill()  # SIGKILL: the lock file keeps the dead holder's pid
        holder.wait()
    assert snapshot(run) == {**before, ".run.lock": snapshot(run)[".run.lock"]}
    assert str(holder.pid) in (run / ".run.lock").read_text()
    # A stale lock (its holder killed) is taken over, and left empty when released.
    from mimic_runner.rundir import RunDir

    assert RunDir(run).lock_holder() is None
    with RunDir(run).locked():
        assert (run / ".run.lock").read_text().split()[0] == str(os.getpid())
    assert (run / ".run.lock").read_text() == ""


def test_two_runs_started_together_leave_one_complete_run(trained: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([str(EXE / "mimic-run"), *ARGS], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    loser = next((p, err) for p, _, err in results if p.returncode == 2)
    winner = next(p for p, _, _ in results if p.returncode == 0)
    err = one_error_line(subprocess.CompletedProcess([], 2, "", loser[1]))
    assert f"another run is using this folder (pid {winner.pid} on " in err
    run = only_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and (run / "explanations.h5").exists()


# -- 4. bad configs: one line before anything starts ----------------------------------------------

CONFIG_PROBES = {
    "seed=abc": "error: seed=abc: use an integer from 0 to 4294967295",
    "seed=-1": "error: seed=-1: use an integer from 0 to 4294967295",
    "seed=99999999999999999999":
        "error: seed=99999999999999999999: use an integer from 0 to 4294967295",
    "data.batch_size=0": "error: data.batch_size=0: use a positive number of images per batch",
    "data.batch_size=-3": "error: data.batch_size=-3: use a positive number of images per batch",
    "trainer.max_epochs=0": "error: trainer.max_epochs=0: use at least 1 epoch",
    "data.image_size=0":
        "error: data.image_size=0: use a size in pixels (or null to keep the file's)",
    "data.image_size=8": "error: data.image_size=8: backbone=small_cnn needs at least 16 px",
    "foo=1": "error: foo: no such config key; check its spelling (`mimic-run --cfg job` shows "
             "every key) or add a new one with +foo=...",
    "model.ensemble_size=0": "error: model.ensemble_size=0: use 1",
    "model=expl_ensemble model.ensemble_size=1":
        "error: model.ensemble_size=1: an ensemble needs at least 2 members",
    "resume=maybe": "error: resume=maybe: use true or false",
    "-m seed=abc,1": "error: seed=abc: use an integer from 0 to 4294967295",
    "-m --cfg job": "error: --multirun and --cfg: use only one of --run, --multirun, --cfg, "
                    "--info, --shell-completion",
}


@pytest.mark.parametrize("probe", list(CONFIG_PROBES))
def test_bad_config_is_one_line(probe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from mimic_runner.cli import run as cli_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mimic-run", "trainer=smoke", *probe.split()])
    err = in_process_error(capsys, lambda _argv: cli_run.main())
    assert err == CONFIG_PROBES[probe]
    assert not (tmp_path / "runs").exists()


def test_bad_config_console_script(tmp_path: Path) -> None:
    """The same through the installed command (Hydra's own error handling in the way)."""
    err = one_error_line(run_cli(["mimic-run", "trainer=smoke", "seed=abc"], cwd=tmp_path))
    assert err == CONFIG_PROBES["seed=abc"]
    assert not (tmp_path / "runs").exists()


# -- 6. outputs that cannot be written ------------------------------------------------------------


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A regular file where a folder would have to be (root writes anywhere else)."""
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


def test_unwritable_runs_dir(blocker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from mimic_runner.cli import run as cli_run

    monkeypatch.chdir(tmp_path)
    for argv, folder in ((["trainer=smoke", f"paths.runs_dir={blocker}/runs"],
                          f"{blocker}/runs/trainer=smoke"),
                         (["-m", "trainer=smoke", "seed=1,2", f"paths.runs_dir={blocker}"],
                          f"{blocker}/multirun")):
        monkeypatch.setattr(sys, "argv", ["mimic-run", *argv])
        err = in_process_error(capsys, lambda _argv: cli_run.main())
        runs_dir = argv[-1].split("=", 1)[1]
        assert err == (f"error: paths.runs_dir={runs_dir}: cannot create the folder {folder}: "
                       f"{blocker} is a file; choose another output folder")


def test_read_only_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from mimic_runner import io as mio
    from mimic_runner.cli import run as cli_run

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(mio.os, "access",  # tests run as root, for whom chmod changes nothing
                        lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mimic-run", "trainer=smoke", f"paths.runs_dir={ro}"])
    err = in_process_error(capsys, lambda _argv: cli_run.main())
    assert err == (f"error: paths.runs_dir={ro}: the folder {ro} is not writable; choose "
                   "another output folder or fix its permissions")


def test_unwritable_out_of_every_command(blocker: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from mimic_runner.cli.bench import main as bench_main
    from mimic_runner.cli.data import main as data_main
    from mimic_runner.cli.explain import main as explain_main
    from mimic_runner.cli.report import main as report_main

    out = blocker / "out"
    expected = f"cannot create the folder {out}: {blocker} is a file; choose another output folder"
    # Checked before the runs are read: any folder stands for them.
    for main, argv in ((report_main, [str(tmp_path), "--out", str(out)]),
                       (explain_main, ["global", str(tmp_path), "--out", str(out)]),
                       (explain_main, ["peppr", str(tmp_path), "--out", str(out)])):
        assert in_process_error(capsys, main, *argv) == f"error: --out: {expected}"
    assert bench_main(["--quick", "--out", str(out / "b.json")]) == 2  # returns its status
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --out {out / 'b.json'}: cannot create the folder {out}: {blocker} "
                   "is a file; choose another output folder")
    err = in_process_error(capsys, data_main, "synth-cxr", "--out", str(out / "d.h5"))
    assert f"{blocker} is a file" in err
    assert blocker.read_text() == "x"


# -- 8. mimic-explain right after a smoke run ----------------------------------------------------


def test_explain_global_and_peppr_work_right_after_a_smoke_run(trained: Path,
                                                               tmp_path: Path) -> None:
    """A smoke run tests only a few batches, so explanations.h5 covers part of the test split:
    both commands use that subset (with a note), never blaming the dataset."""
    proc = run_cli(["mimic-explain", "global", str(trained), "--out", str(tmp_path)],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "global_explanations.h5").exists()
    assert (tmp_path / "global_maps.png").exists()
    proc = run_cli(["mimic-explain", "peppr", str(trained), "--out", str(tmp_path), "--steps",
                    "3", "--random-seeds", "1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "peppr.json").read_text())


# -- 9. SIGINT, metrics.json ---------------------------------------------------------------------


def test_sigint_exits_130(trained: Path, tmp_path: Path) -> None:
    # Many batches per epoch: the signal lands while the model trains.
    args = [*ARGS, "trainer.max_epochs=50", "trainer.limit_train_batches=50"]
    proc = subprocess.Popen([str(EXE / "mimic-run"), *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # a shell's background job would ignore SIGINT; this one must not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("runs/*/csv")):  # the logger starts when fit does
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    run = only_run(tmp_path)
    assert not (run / "metrics.json").exists()
    assert (run / ".run.lock").read_text() == ""  # released


def test_all_zero_gaze_gives_valid_json(tmp_path: Path) -> None:
    """NSS, CC, KLD... are undefined on an all-zero gaze map: metrics.json holds null for them
    (listed under undefined_metrics), never a bare NaN."""
    from mimic_runner.data.schema import write_dataset
    from mimic_runner.data.synth_cxr import generate

    arrays = generate(n=120, size=64, seed=0)
    arrays["gaze"][arrays["split"] == 2] = 0.0
    data = write_dataset(tmp_path / "zero_gaze.h5", **arrays)
    proc = run_cli(["mimic-run", "data=folder", f"data.path={data}", "trainer=smoke"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (only_run(tmp_path) / "metrics.json").read_text()

    def refuse(name: str) -> None:
        raise AssertionError(f"metrics.json holds a bare {name}")

    metrics = json.loads(text, parse_constant=refuse)
    assert metrics["undefined_metrics"]
    assert all(metrics[k] is None for k in metrics["undefined_metrics"])
    assert {"test/kld", "test/cc", "test/sim"} <= set(metrics["undefined_metrics"])

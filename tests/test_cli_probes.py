"""Command-line probes (issue 23): every hostile or mistaken ``mimic-run`` command line ends in
one ``error:`` line and exit 2, with no traceback and nothing written (no run folder); SIGTERM
says what happened; a sweep says what it will do before Hydra goes quiet composing it.

The probes run the entry point in-process (only the checks before any work run, so no start-up
cost per probe); a few run the installed console script, as a user would.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import run_cli

from mimic_runner.config import limits

LONG = "a" * 300  # one path component over every file system's NAME_MAX (255 bytes)

# probe -> the start of the message after "error: " (the thing named)
PROBES = {
    # groups removed or set to null
    "~model": "~model: every run needs a model; choose one of ",
    "model=null": "model=null: every run needs a model",
    "+model=null": "+model=null: every run needs a model",
    "~data": "~data: every run needs a data",
    "backbone=null": "backbone=null: every run needs a backbone",
    "~trainer": "~trainer: every run needs a trainer",
    "-m model=baseline,null": "model=baseline,null: every run needs a model",
    # interpolations that do not resolve
    "data.path=${oc.env:NO_SUCH_VAR_MIMIC}":
        "data.path=${oc.env:NO_SUCH_VAR_MIMIC}: Environment variable 'NO_SUCH_VAR_MIMIC' not "
        "found",
    "seed=${foo.bar}": "seed=${foo.bar}: Interpolation key 'foo.bar' not found",
    "data.batch_size=${nope}": "data.batch_size=${nope}: Interpolation key 'nope' not found",
    # over-long paths
    f"data.path=/tmp/{LONG}/x.h5": "data.path=",
    f"paths.runs_dir={LONG}": "paths.runs_dir=",
    f"sweep_name={LONG}": "sweep_name=",
    # absurd integers: an upper bound for every size, count and seed
    "seed=" + "9" * 5000: "seed: a number with 5,000 digits",
    "data.batch_size=99999999999999999999": "data.batch_size=99999999999999999999: too large",
    "data.eval_batch_size=1000000000": "data.eval_batch_size=1000000000: too large",
    "data.num_workers=1000000": "data.num_workers=1000000: too large",
    "data.image_size=100000000": "data.image_size=100000000: too large",
    "data.synth.params.n=1000000000000": "data.synth.params.n=1000000000000: too large",
    "data.synth.params.seed=99999999999": "data.synth.params.seed=99999999999: use an integer",
    "trainer.max_epochs=100000000000": "trainer.max_epochs=100000000000: too large",
    "model=normal_ensemble model.ensemble_size=100000": "model.ensemble_size=100000: too large",
    "trainer.log_every_n_steps=99999999999999999999": "trainer.log_every_n_steps=",
    # memory that cannot fit, refused before allocating
    "data.synth.params.n=9000000 data.synth.params.size=1024": "data.synth.params.n=9000000 at",
    # NaN and infinities in float hyper-parameters
    "model=expl_ensemble model.lambda_consistency=nan": "model.lambda_consistency=nan: not a",
    "model=expl_ensemble model.lambda_consistency=inf": "model.lambda_consistency=inf: not a",
    "model=expl_ensemble model.warmup_epochs=nan": "model.warmup_epochs=nan: not a",
    "model.optimizer.lr=nan": "model.optimizer.lr=nan: not a",
    "model.optimizer.weight_decay=-inf": "model.optimizer.weight_decay=-inf: not a",
    "model=improved_unet model.gamma=nan": "model.gamma=nan: not a",
    "select_after=inf": "select_after=inf: not a",
    "explain.acc_floor=nan": "explain.acc_floor=nan: not a",
    # the Trainer: unknown arguments, a GPU that is not there, devices beyond the machine
    "+trainer.bogus_kw=1": "trainer.bogus_kw: Lightning's Trainer takes no such argument",
    "+trainer.max_epoch=3": "trainer.max_epoch: Lightning's Trainer takes no such argument; "
                            "did you mean trainer.max_epochs?",
    "trainer=gpu": "trainer.accelerator=gpu: this machine has no CUDA GPU",
    "trainer.accelerator=cuda": "trainer.accelerator=cuda: this machine has no CUDA GPU",
    "trainer.devices=100000": "trainer.devices=100000: this machine has ",
    "trainer.devices=0": "trainer.devices=0: use 1 or more",
    "trainer.devices=2": "trainer.devices=2: ",  # one device per run (or: beyond 1 core)
    "trainer.devices=[0,1]": "trainer.devices=[0, 1]: a run trains on one device",
    # a class or function that does not import
    "model.optimizer._target_=torch.optim.Nope":
        "model.optimizer._target_=torch.optim.Nope: cannot import it (ModuleNotFoundError",
    # command-line flags and sweeps
    "--config-dir /no/such/dir/mimic": "--config-dir /no/such/dir/mimic: no such folder",
    "-m seed=3,3": "seed=3,3: 3 is listed more than once",
    "-m seed=1,2 model=baseline,baseline": "model=baseline,baseline: baseline is listed",
}


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probes read the same on a GPU machine: the pre-flight sees none."""
    monkeypatch.setattr(limits, "_gpu_count", lambda: 0)


def run_in_process(argv: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``mimic-run ARGV`` in this process: (exit code, stderr)."""
    from mimic_runner.cli import run as cli_run

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["mimic-run", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_run.main()
    return int(exc.value.code or 0), capsys.readouterr().err


def assert_one_error_line(code: int, err: str, expected: str) -> None:
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: " + expected), lines[0]


@pytest.mark.parametrize("probe", list(PROBES), ids=[p[:60] for p in PROBES])
def test_probe_is_one_line(probe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str], no_gpu: None) -> None:
    code, err = run_in_process(["trainer=smoke", *probe.split(" ")], tmp_path, monkeypatch,
                               capsys)
    assert_one_error_line(code, err, PROBES[probe])
    assert list(tmp_path.iterdir()) == []  # nothing written: no run folder, no .hydra/


@pytest.mark.parametrize("probe", ["~model", "model=null", "seed=${foo.bar}",
                                   f"data.path={LONG}.h5", "model.lambda_consistency=nan"])
def test_probe_console_script(probe: str, tmp_path: Path) -> None:
    """The installed command, Hydra's own error handling in the way."""
    proc = run_cli(["mimic-run", "trainer=smoke", probe], cwd=tmp_path, timeout=300)
    assert_one_error_line(proc.returncode, proc.stderr, "")
    assert list(tmp_path.iterdir()) == []


def _dotted(key: str) -> str:
    """``a.b[0]`` as OmegaConf.update's ``a.b.0``."""
    return re.sub(r"\[(\d+)\]", r".\1", key)


@pytest.mark.parametrize("n", ["1000000000000", "9" * 30, "9000000 --size 1024"])
def test_synth_request_that_cannot_fit_is_one_line(n: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``mimic-data synth-cxr --n HUGE``: refused before numpy tries to allocate it."""
    from mimic_runner.cli.data import main

    out = tmp_path / "x.h5"
    with pytest.raises(SystemExit) as exc:
        main(["synth-cxr", "--n", *n.split(" "), "--out", str(out)])
    assert_one_error_line(int(exc.value.code or 0), capsys.readouterr().err, "--n ")
    assert list(tmp_path.iterdir()) == []


def test_numbers_every_float_key_finite_and_every_int_bounded(compose) -> None:  # type: ignore[no-untyped-def]
    """The checks walk every key, so a float or count added later is covered too."""
    from omegaconf import OmegaConf

    from mimic_runner.errors import UserError

    cfg = compose("model=expl_ensemble")
    floats = [k for k, v in limits.leaves(cfg) if isinstance(v, float)]
    ints = [k for k, v in limits.leaves(cfg) if isinstance(v, int) and not isinstance(v, bool)]
    assert "model.lambda_consistency" in floats and "data.synth.params.n" in ints
    limits.check_numbers(cfg)
    for key in floats:
        bad = cfg.copy()
        OmegaConf.update(bad, _dotted(key), float("nan"))
        with pytest.raises(UserError, match=f"^{re.escape(key)}=nan: "):
            limits.check_numbers(bad)
    for key in ints:
        bad = cfg.copy()
        OmegaConf.update(bad, _dotted(key), limits.int_bound(key) + 1)
        with pytest.raises(UserError, match=f"^{re.escape(key)}="):
            limits.check_numbers(bad)


def test_memory_is_checked_before_allocating(compose, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from mimic_runner.errors import UserError

    cfg = compose("data.synth.params.n=3000", "data.synth.params.size=128")
    monkeypatch.setattr(limits, "available_memory", lambda: 3000 * 128 * 128 * 16 - 1)
    with pytest.raises(UserError, match=r"needs about 0\.7 GiB of memory"):
        limits.check_memory(cfg)
    monkeypatch.setattr(limits, "available_memory", lambda: 3000 * 128 * 128 * 16)
    limits.check_memory(cfg)


def test_name_too_long_is_worded() -> None:
    import errno

    exc = OSError(errno.ENAMETOOLONG, "File name too long", "/tmp/" + LONG)
    assert "file name too long" in (limits.name_too_long(exc) or "")
    assert limits.name_too_long(OSError(errno.ENOENT, "x")) is None


# -- Lightning's or Hydra's wrapped errors keep their cause ---------------------------------------

def test_wrapped_error_keeps_its_cause() -> None:
    from hydra.errors import InstantiationException

    from mimic_runner.cli.run import _cause_kept

    try:
        try:
            raise TypeError("Trainer.__init__() got an unexpected keyword argument 'bogus_kw'")
        except TypeError as cause:
            raise InstantiationException("Error in call to target 'lightning.Trainer':\n"
                                         f"{cause!r}") from cause
    except InstantiationException as exc:
        text = _cause_kept(exc)
    assert text == ("Error in call to target 'lightning.Trainer': TypeError: Trainer.__init__() "
                    "got an unexpected keyword argument 'bogus_kw'")


# -- sweeps ---------------------------------------------------------------------------------------

def test_plan_sweep_counts_jobs_and_batches_serial_sweeps() -> None:
    from mimic_runner.config import check_argv
    from mimic_runner.training.sweep import SERIAL_BATCH, plan_sweep

    cfg = check_argv(["-m", "trainer=smoke", "seed=range(0,10000)"])
    plan = plan_sweep(cfg, ["trainer=smoke", "seed=range(0,10000)"])
    assert (plan.jobs, plan.batch) == (10_000, SERIAL_BATCH)
    cfg = check_argv(["-m", "trainer=smoke", "seed=1,2", "model=baseline,expl_ensemble"])
    plan = plan_sweep(cfg, ["trainer=smoke", "seed=1,2", "model=baseline,expl_ensemble"])
    assert (plan.jobs, plan.batch) == (4, None)


def test_large_sweep_says_what_it_does_before_hydra_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The line comes before Hydra composes any job (here Hydra is replaced), and a serial
    sweep checks its configs a batch at a time, so its first job starts at once."""
    from mimic_runner.cli import run as cli_run

    seen: dict[str, object] = {}

    def fake_hydra() -> None:
        seen["err"] = capsys.readouterr().err
        seen["argv"] = list(sys.argv)
        seen["t"] = time.monotonic()

    monkeypatch.setattr(cli_run, "_hydra_main", fake_hydra)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mimic-run", "-m", "trainer=smoke", "seed=range(0,10000)"])
    cli_run.main()
    assert "sweep: 10,000 jobs into runs/multirun" in str(seen["err"])
    assert "hydra.sweeper.max_batch_size=50" in seen["argv"]  # type: ignore[operator]


def test_skipping_job_writes_nothing_into_the_busy_runs_log(tmp_path: Path) -> None:
    """A job of a second sweep finds its folder in use: its ERROR line goes to the console,
    not into the other run's run.log."""
    from mimic_runner.cli.run import skip_busy_folder

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from mimic_runner.rundir import RunDir\n"
         f"with RunDir(Path({str(run_dir)!r})).locked():\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        (run_dir / "run.log").write_text("the other run's log\n")
        handler = logging.FileHandler(run_dir / "run.log")
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            assert skip_busy_folder(run_dir)
        finally:
            root.removeHandler(handler)
            handler.close()
        assert (run_dir / "run.log").read_text() == "the other run's log\n"
    finally:
        holder.kill()
        holder.wait()
    assert not skip_busy_folder(run_dir)  # released: the job goes on


# -- SIGTERM --------------------------------------------------------------------------------------

def test_sigterm_exits_143_with_a_line(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from mimic_runner.cli import run as cli_run

    def killed() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli_run, "_main", killed)
    with pytest.raises(SystemExit) as exc:
        cli_run.main()
    assert exc.value.code == 143
    assert capsys.readouterr().err.strip().startswith("terminated (SIGTERM)")
    assert signal.getsignal(signal.SIGTERM) is before  # put back


@pytest.mark.slow
def test_sigterm_while_training_exits_143(tmp_path: Path) -> None:
    args = ["trainer=smoke", "data.synth.params.n=240", "data.image_size=64",
            "trainer.max_epochs=50", "trainer.limit_train_batches=50"]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mimic-run"), *args],
                            cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("runs/*/csv")):  # the logger starts when fit does
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("terminated")
    (run,) = [p.parent.parent for p in tmp_path.glob("runs/*/.hydra/config.yaml")]
    assert not (run / "metrics.json").exists() and not (run / "failed.json").exists()
    assert (run / ".run.lock").read_text() == ""  # released

"""`mimic-run`: the Hydra entry point that trains and evaluates one model per job.

    mimic-run model=expl_ensemble seed=1735
    mimic-run -m sweep=table1 trainer=gpu [launcher=local|slurm|submitit_local]

It only checks the command line, hands the composed config to
:func:`mimic_runner.training.run.run_experiment`, and maps the outcome to an exit status:
0 done, 2 a user error (one ``error:`` line), 1 a sweep in which some run failed, 130 Ctrl+C,
143 SIGTERM (each with a line saying so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from mimic_runner.config import check_argv, first_line, flags_first, register
from mimic_runner.config.argv import command_overrides
from mimic_runner.config.limits import name_too_long
from mimic_runner.errors import UserError, exit_on_user_error, no_room, no_room_message
from mimic_runner.log import stdout
from mimic_runner.paths import conf_dir

# The sweep summary (a Hydra callback in the launching process) writes its outcome here.
OUTCOME_ENV = "MIMIC_RUNNER_SWEEP_OUTCOME"


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from mimic_runner.config import validate
    from mimic_runner.training.local_launcher import local_job_resources
    from mimic_runner.training.run import optimized_value, run_experiment

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and skip_busy_folder(run_dir):
        return None
    try:
        validate(cfg)  # before the job takes a GPU slot and CPU threads
        resources: contextlib.AbstractContextManager = contextlib.nullcontext()
        if multirun and OmegaConf.select(cfg, "launcher.name") == "local":
            resources = local_job_resources(
                int(hc.job.num), int(OmegaConf.select(hc, "launcher.n_jobs", default=1) or 1),
                use_gpus=cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda"),
                jobs_per_gpu=int(cfg.launcher.get("jobs_per_gpu") or 1))
        with resources as gpu:
            metrics = run_experiment(cfg, run_dir, multirun=multirun,
                                     devices=None if gpu is None else [gpu],
                                     on_trained=print_summary)
    except UserError as exc:
        if multirun:  # checked before the run started: record it like any failed run
            from mimic_runner.training.run import record_failure

            record_failure(run_dir, exc, cfg)
            return None
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)  # SystemExit passes through Hydra's handler, which would print a trace
    except HydraException as exc:  # building the Trainer, a callback: Lightning's reason kept
        if multirun:
            raise
        print(f"error: {_cause_kept(exc)}; `mimic-run --cfg job` shows the composed config",
              file=sys.stderr)
        sys.exit(2)  # here, not in main(): Hydra would first print "Error executing job ..."
    return optimized_value(cfg, metrics)


def skip_busy_folder(run_dir: Path) -> bool:
    """A sweep's job whose folder another process is training in: say so on the console only
    (not into that run's ``run.log``, where Hydra pointed this job's log file) and skip it."""
    from mimic_runner.rundir import RunDir

    busy = RunDir(run_dir).lock_holder()
    if not busy:
        return False
    root = logging.getLogger()
    for handler in list(root.handlers):
        name = getattr(handler, "baseFilename", None)
        if name and Path(name).resolve().parent == run_dir.resolve():
            root.removeHandler(handler)
            handler.close()
    logging.getLogger(__name__).error("skip %s", busy)
    return True


def print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    """The run's test metrics as a table on stdout."""
    table = Table(title=f"{metrics['model']} · seed {metrics['seed']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(k for k in metrics if k.startswith("test/")):
        v = metrics[k]
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    table.add_row("train_seconds", f"{metrics['train_seconds']:.1f}")
    stdout.print(table)
    # On its own line: in the table's title it would be wrapped to the table's width.
    stdout.print(f"run directory: {run_dir}", soft_wrap=True, highlight=False, markup=False)


# Flags after which Hydra runs no job (it prints something and returns).
_NO_JOB = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--version",
           "--shell-completion", "-sc")
_MODES = (("--run", "-r"), ("--multirun", "-m"), ("--cfg", "-c"), ("--info", "-i"),
          ("--shell-completion", "-sc"))


class Terminated(BaseException):
    """SIGTERM (``kill``, a scheduler, ``timeout``), raised where the process is, as Ctrl+C
    raises KeyboardInterrupt: a BaseException, so the run's ``finally`` blocks (its lock, the
    logger) run and no handler records it as the run's own failure."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main() -> None:
    """``mimic-run``: exit 143 with one line on SIGTERM (Lightning, when it trains, calls this
    handler after its own)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _main()
    except Terminated:
        print("terminated (SIGTERM); a run that did not finish continues with resume=true",
              file=sys.stderr)
        sys.exit(143)
    finally:
        signal.signal(signal.SIGTERM, previous)


def announce_sweep(cfg: DictConfig, argv: list[str]) -> None:
    """Before Hydra starts a multirun: refuse a value listed twice, say how many jobs will run
    and where (Hydra composes every job's config before the first starts: minutes of silence
    for a large sweep), and let a serial sweep check its configs a batch at a time."""
    from mimic_runner.training.sweep import plan_sweep

    plan = plan_sweep(cfg, command_overrides(argv))
    where = OmegaConf.select(cfg, "hydra.sweep.dir", default=None, throw_on_missing=False)
    if plan.jobs is None:
        return
    if plan.batch:
        sys.argv.append(f"hydra.sweeper.max_batch_size={plan.batch}")
        how = f"one after another, their configs checked {plan.batch} at a time"
    else:
        how = "every job's config is composed and checked before the first starts"
    print(f"sweep: {plan.jobs:,} job{'s' if plan.jobs != 1 else ''} into {where}; {how}",
          file=sys.stderr, flush=True)


def _cause_kept(exc: BaseException) -> str:
    """A Hydra error as one line, keeping the cause it wraps ("Error in call to target
    'lightning...Trainer':" says nothing without the TypeError under it)."""
    text = first_line(exc).replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception",
                                   "")
    cause = exc.__cause__ or exc.__context__
    while cause is not None and first_line(cause).endswith(":"):  # says more further down
        cause = cause.__cause__ or cause.__context__
    if cause is not None and first_line(cause) not in text:
        text = f"{text.rstrip(':')}: {type(cause).__name__}: {first_line(cause)}"
    return text


@exit_on_user_error
def _main() -> None:
    register()
    argv = sys.argv[1:] = flags_first(sys.argv[1:])  # Hydra parses sys.argv itself
    modes = [m[0] for m in _MODES if any(a in m for a in argv)]
    if len(modes) > 1:  # Hydra raises a ValueError with a traceback
        raise UserError(f"{' and '.join(modes)}: use only one of --run, --multirun, --cfg, "
                        "--info, --shell-completion")
    cfg = check_argv(argv)
    from mimic_runner.training.run import check_run_folder
    from mimic_runner.training.sweep import read_outcome

    multirun = any(a in ("-m", "--multirun") for a in argv)
    if not any(a in _NO_JOB for a in argv):
        # The folder can be written, is not in use, and a resume's checkpoint is readable:
        # all checked before Hydra rewrites the folder's .hydra/ files.
        check_run_folder(cfg, multirun=multirun)
        if multirun:
            announce_sweep(cfg, argv)

    # Errors reach the handlers here (one line for a config error or a full disk, e.g. while
    # Hydra writes .hydra/), instead of Hydra's shortened traceback.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    # A log line that cannot be written to run.log (full disk) must not print a traceback per
    # record; the write that matters (a checkpoint, metrics.json) reports the full disk.
    logging.raiseExceptions = False
    with tempfile.TemporaryDirectory(prefix="mimic-run-") as tmp:
        outcome_file = Path(tmp) / "outcome.json"
        os.environ[OUTCOME_ENV] = str(outcome_file)
        # Hydra reads sys.argv itself; a bare `mimic-run` is a single run with the defaults.
        try:
            _hydra_main()
        except HydraException as exc:
            raise UserError(f"{_cause_kept(exc)}; `mimic-run --cfg job` shows the composed "
                            "config") from None
        except OSError as exc:
            if name_too_long(exc):
                raise UserError(str(name_too_long(exc))) from None
            if no_room(exc) is None or exc.filename:
                raise
            # Hydra's writes of .hydra/ and run.log name no file: name the run's folder.
            where = OmegaConf.select(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir",
                                     default=None, throw_on_missing=False)
            raise UserError(no_room_message(exc, where=f"{where} (a file in it)",
                                            atomic=False)) from None
        outcome = read_outcome(outcome_file)
    if outcome is not None and outcome.failed:
        # The other runs went on; the exit status still tells scripts (make, CI) about it.
        sys.exit(1)


if __name__ == "__main__":
    main()

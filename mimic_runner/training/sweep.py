"""Sweep bookkeeping: which runs a multirun trained, skipped, lost or left unfinished.

:class:`SweepSummary` is a Hydra callback (``hydra.callbacks.sweep_summary`` in
``conf/hydra/default.yaml``); it runs in the launching process whatever launcher ran the jobs,
logs one summary line and, when given an ``outcome_file``, writes the outcome there as JSON so
that the command that started the sweep can set its exit status.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mimic_runner.io import read_json, write_json
from mimic_runner.rundir import RunDir, find_run_dirs

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What one multirun invocation did, run folder by run folder."""

    trained: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.trained) + len(self.skipped) + len(self.failed) + len(self.incomplete)

    def to_json(self) -> dict[str, list[str]]:
        return {k: [str(p) for p in getattr(self, k)]
                for k in ("trained", "skipped", "failed", "incomplete")}

    @classmethod
    def from_json(cls, data: dict[str, list[str]]) -> SweepOutcome:
        return cls(**{k: [Path(p) for p in data.get(k, [])]
                      for k in ("trained", "skipped", "failed", "incomplete")})


_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Jobs whose configs Hydra's basic sweeper composes (and checks) before it starts the first:
# every job at once by default, which for 10,000 jobs is minutes of silence. One after another
# (launcher=serial) nothing is lost by checking them a batch at a time.
SERIAL_BATCH = 50


@dataclass
class SweepPlan:
    """What a multirun will launch, known before Hydra starts: ``jobs`` (None when a sweeper
    other than the basic one decides) and the ``batch`` size to give the basic sweeper (None:
    leave it)."""

    jobs: int | None
    batch: int | None = None


def sweep_values(items: list[str]) -> dict[str, list[str]]:
    """Each key's values in the order Hydra's basic sweeper takes them (``key=a,b``,
    ``range(...)``, a plain ``key=v`` as one value; a later item for a key replaces an earlier
    one, as there). Raises Hydra's own parse errors."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(items):
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                return {}  # an interval: only a sweeper such as Optuna takes it
            values[key] = list(o.sweep_string_iterator())
        else:
            values[key] = [o.get_value_element_as_str()]
    return values


def plan_sweep(cfg: DictConfig, overrides: list[str]) -> SweepPlan:
    """Count a multirun's jobs and refuse a value listed twice (``-m seed=3,3``: both jobs
    would be one run folder, trained once and counted as skipped). ``cfg`` is the pre-flight's
    config (with its ``hydra`` node), ``overrides`` the command line's ``key=value`` items."""
    from omegaconf import OmegaConf

    from mimic_runner.errors import UserError

    sweeper = OmegaConf.select(cfg, "hydra.sweeper", default=None)
    if sweeper is None or sweeper.get("_target_") != _BASIC_SWEEPER:
        trials = sweeper.get("n_trials") if sweeper is not None else None
        return SweepPlan(trials if isinstance(trials, int) else None)
    params = sweeper.get("params") or {}
    values = sweep_values([f"{k}={v}" for k, v in params.items()] + list(overrides))
    jobs = 1
    for key, vals in values.items():
        seen = {v for v in vals if vals.count(v) > 1}
        if seen:
            raise UserError(f"{key}={','.join(vals)}: {sorted(seen)[0]} is listed more than "
                            "once; each job of a sweep needs its own values (its own run "
                            "folder), so list each value once")
        jobs *= len(vals)
    batch = None
    if (OmegaConf.select(cfg, "launcher.name") == "serial" and jobs > SERIAL_BATCH
            and sweeper.get("max_batch_size") is None):
        batch = SERIAL_BATCH
    return SweepPlan(jobs, batch)


def sweep_outcome(sweep_dir: Path, since: float) -> SweepOutcome:
    """Classify the runs a sweep started at ``since`` (epoch seconds) touched.

    Hydra rewrites a job's ``.hydra/config.yaml`` in the job's own process before calling it,
    skipped jobs included, so that file's mtime tells which folders belong to this invocation
    (whatever the launcher). A ``metrics.json`` older than that config was written by an earlier
    invocation: the run was skipped. (Comparing with ``since`` instead miscounted a run that had
    finished within the slack of a sweep started right after it; both files here come from one
    process, on one clock.)
    """
    out = SweepOutcome()
    for d in find_run_dirs(sweep_dir):
        rd = RunDir(d)
        config_mtime = rd.config.stat().st_mtime
        if config_mtime < since:
            continue  # a run of an earlier, different invocation
        status = rd.status()
        if status == "finished":
            fresh = rd.metrics.stat().st_mtime >= config_mtime
            (out.trained if fresh else out.skipped).append(d)
        elif status == "failed":
            out.failed.append(d)
        else:
            out.incomplete.append(d)
    return out


def read_outcome(path: Path) -> SweepOutcome | None:
    """The outcome a :class:`SweepSummary` wrote to ``path`` (None if it wrote none)."""
    try:
        return SweepOutcome.from_json(read_json(path))
    except (OSError, ValueError, TypeError):
        return None


class SweepSummary(Callback):
    """One summary line at the end of a multirun, in the launching process."""

    def __init__(self, outcome_file: str | None = None) -> None:
        self.outcome_file = outcome_file
        self.start = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Slack for coarse file-system timestamps (and small clock skew on shared disks).
        self.start = time.time() - 2.0

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        out = sweep_outcome(sweep_dir, self.start)
        if self.outcome_file:
            write_json(self.outcome_file, out.to_json())
        parts = [f"{len(out.trained)} trained", f"{len(out.skipped)} skipped (finished before)"]
        if out.failed:
            parts.append(f"{len(out.failed)} failed")
        if out.incomplete:
            parts.append(f"{len(out.incomplete)} incomplete")
        log.info("sweep %s: %d runs: %s", sweep_dir, out.total, ", ".join(parts))
        for d in out.failed:
            log.warning("failed %s", RunDir(d).failed)
        for d in out.incomplete:
            log.warning("incomplete %s (re-run with resume=true)", d)

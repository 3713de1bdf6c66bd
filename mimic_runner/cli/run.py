"""`mimic-run`: the Hydra entry point that trains and evaluates one model per job.

    mimic-run model=expl_ensemble seed=1735
    mimic-run -m sweep=table1 trainer=gpu [launcher=local|slurm|submitit_local]
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mimic_runner.errors import UserError, exit_on_user_error
from mimic_runner.paths import conf_dir, sweeps_dir

# Overrides that choose where or how a job runs, never what it computes: they stay out of the
# run folder's name, so changing them (cluster partition, parallel jobs) finds the same runs.
_NOT_IN_DIRNAME = ("launcher.", "hydra.")

# launcher option -> (Hydra plugin module, pip package)
LAUNCHER_PLUGINS = {
    "local": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def _split_overrides(joined: str) -> list[str]:
    """Split Hydra's comma-joined ``override_dirname`` into items (commas inside [], {}, ()
    or quotes belong to a value)."""
    items, depth, quote, cur = [], 0, "", []
    for ch in joined:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur))
    return [i for i in items if i]


def _run_dirname(override_dirname: str) -> str:
    """A run folder name from the job's overrides: deterministic, one path component."""
    items = [i for i in _split_overrides(override_dirname)
             if not i.lstrip("+~").startswith(_NOT_IN_DIRNAME)]
    if not items:
        return "defaults"
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", ",".join(items).replace("/", "_"))[:200]


def _local_n_jobs(n_jobs: int | None, jobs_per_gpu: int) -> int:
    import torch

    from mimic_runner.training.run import local_n_jobs

    return local_n_jobs(n_jobs, int(jobs_per_gpu), torch.cuda.device_count())


def register() -> None:
    """Resolvers and the ``sweep`` group (the top-level ``sweeps/`` folder)."""
    if not OmegaConf.has_resolver("run_dirname"):
        OmegaConf.register_new_resolver("run_dirname", _run_dirname)
    if not OmegaConf.has_resolver("local_n_jobs"):
        OmegaConf.register_new_resolver("local_n_jobs", _local_n_jobs)
    cs = ConfigStore.instance()
    for path in sorted(Path(sweeps_dir()).glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def check_launcher_plugin(argv: Sequence[str], find_spec=importlib.util.find_spec) -> None:
    """Raise a :class:`UserError` naming the package when ``launcher=X`` needs a missing plugin
    (Hydra alone would only say that the config ``hydra/launcher/...`` was not found)."""
    for arg in argv:
        if not arg.startswith("launcher="):
            continue
        name = arg.split("=", 1)[1]
        if name not in LAUNCHER_PLUGINS:
            continue
        module, package = LAUNCHER_PLUGINS[name]
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise UserError(f"launcher={name} needs the Hydra plugin '{package}'; install the "
                            "launchers extra: pip install 'mimic-runner[launchers]'")


def _config_dirs(argv: Sequence[str]) -> list[Path]:
    """The packaged ``conf/`` plus any ``--config-dir``/``-cd`` the user added."""
    dirs = [Path(conf_dir())]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


def check_group_options(argv: Sequence[str]) -> None:
    """Raise a :class:`UserError` for ``group=option`` naming no option of a config group.

    Hydra would print a multi-line "Could not find" block; a typo in ``model=`` deserves one
    line that lists the choices. Sweep expressions (``choice(...)``, interpolations) and
    ``null`` are left to Hydra."""
    dirs = _config_dirs(argv)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        group, value = arg.lstrip("+~").split("=", 1)
        if "/" in group or "." in group or any(c in value for c in "()[]{}$"):
            continue
        if group == "sweep":
            options = {p.stem for p in Path(sweeps_dir()).glob("*.yaml")}
        else:
            found = [d / group for d in dirs if (d / group).is_dir()]
            if not found:
                continue
            options = {p.stem for d in found for p in d.glob("*.yaml")}
        for choice in value.split(","):
            if choice and choice != "null" and choice not in options:
                raise UserError(f"{group}={choice}: no such option in config group '{group}'; "
                                f"choose one of {', '.join(sorted(options))}")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from mimic_runner.training.run import local_job_resources, run_experiment

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    resources: contextlib.AbstractContextManager = contextlib.nullcontext()
    if multirun and OmegaConf.select(cfg, "launcher.name") == "local":
        n_jobs = int(OmegaConf.select(hc, "launcher.n_jobs", default=1) or 1)
        resources = local_job_resources(cfg, int(hc.job.num), n_jobs)
    with resources:
        metrics = run_experiment(cfg, run_dir, multirun=multirun)
    if metrics is None:
        return None
    value = metrics.get(f"test/{cfg.get('optimized_metric', 'acc')}")
    return float(value) if value is not None else None


@exit_on_user_error
def main() -> None:
    register()
    check_launcher_plugin(sys.argv[1:])
    check_group_options(sys.argv[1:])
    # Hydra reads sys.argv itself; a bare `mimic-run` is a single run with the defaults.
    _hydra_main()
    from mimic_runner.training.run import last_sweep_outcome

    outcome = last_sweep_outcome()
    if outcome is not None and outcome.failed:
        # The other runs went on; the exit status still tells scripts (make, CI) about it.
        sys.exit(1)


if __name__ == "__main__":
    main()

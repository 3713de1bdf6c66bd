"""Composition: the resolvers the shipped configs use, the ``sweep`` group, and the config
``mimic-run <overrides>`` would see, outside a running Hydra app (library, bench, tests)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mimic_runner.config.resources import local_n_jobs
from mimic_runner.errors import UserError
from mimic_runner.paths import conf_dir, sweeps_dir

# Overrides that choose where or how a job runs, never what it computes: they stay out of the
# run folder's name, so changing them (cluster partition, parallel jobs, the tracking server)
# finds the same runs.
_NOT_IN_DIRNAME = ("launcher.", "hydra.", "logger.")


def split_overrides(joined: str) -> list[str]:
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


def run_dirname(override_dirname: str) -> str:
    """A run folder name from the job's overrides: deterministic, one path component."""
    items = [i for i in split_overrides(override_dirname)
             if not i.lstrip("+~").startswith(_NOT_IN_DIRNAME)]
    if not items:
        return "defaults"
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", ",".join(items).replace("/", "_"))[:200]


def _local_n_jobs(n_jobs: int | None, jobs_per_gpu: int, threads_per_job: int | None = None
                  ) -> int:
    return local_n_jobs(n_jobs, jobs_per_gpu, threads_per_job=threads_per_job)


def register() -> None:
    """Resolvers and the ``sweep`` group (the top-level ``sweeps/`` folder); idempotent."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("run_dirname"):
        OmegaConf.register_new_resolver("run_dirname", run_dirname)
    if not OmegaConf.has_resolver("local_n_jobs"):
        OmegaConf.register_new_resolver("local_n_jobs", _local_n_jobs)
    cs = ConfigStore.instance()
    for path in sorted(Path(sweeps_dir()).glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False,
            config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """The config ``mimic-run <overrides>`` composes (the shipped ``conf/`` plus
    ``config_dirs``), outside any running Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    paths = ",".join(f"file://{Path(d).resolve()}" for d in config_dirs)
    extra = [f"hydra.searchpath=[{paths}]"] if config_dirs else []
    was = GlobalHydra.instance().is_initialized()
    if was:  # e.g. called from inside a Hydra job: compose in a fresh context, then restore
        saved = GlobalHydra.instance().hydra
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose("config", overrides=[*extra, *overrides],
                                 return_hydra_config=return_hydra_config)
    finally:
        if was:
            GlobalHydra.instance().initialize(saved)


def load_run_config(path: str | Path) -> DictConfig:
    """A run's saved ``.hydra/config.yaml`` (resolvers registered, so it resolves)."""
    register()
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{path}: not a run config (expected a mapping)")
    return cfg

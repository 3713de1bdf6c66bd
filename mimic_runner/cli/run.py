"""`mimic-run`: the Hydra entry point that trains and evaluates one model per job.

    mimic-run model=expl_ensemble seed=1735
    mimic-run -m sweep=table1 trainer=gpu
"""

from __future__ import annotations

import re
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mimic_runner.paths import conf_dir, sweeps_dir


def _run_dirname(override_dirname: str) -> str:
    """A run folder name from the job's overrides: deterministic, one path component."""
    if not override_dirname:
        return "defaults"
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", override_dirname.replace("/", "_"))[:200]


def register() -> None:
    """Resolvers and the ``sweep`` group (the top-level ``sweeps/`` folder)."""
    if not OmegaConf.has_resolver("run_dirname"):
        OmegaConf.register_new_resolver("run_dirname", _run_dirname)
    cs = ConfigStore.instance()
    for path in sorted(Path(sweeps_dir()).glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from mimic_runner.training.run import run_experiment

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    metrics = run_experiment(cfg, run_dir, multirun=hc.mode == RunMode.MULTIRUN)
    if metrics is None:
        return None
    value = metrics.get(f"test/{cfg.get('optimized_metric', 'acc')}")
    return float(value) if value is not None else None


def main() -> None:
    register()
    # Hydra reads sys.argv itself; a bare `mimic-run` is a single run with the defaults.
    _hydra_main()


if __name__ == "__main__":
    main()

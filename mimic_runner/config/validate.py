"""Validation of a composed config: one :class:`~mimic_runner.errors.UserError` line for a value
that would fail later (or silently do nothing), before anything starts.

The run-wide keys are checked here; each section built from a ``_target_`` class checks its own
keys through that class's ``validate_config`` classmethod (``model.*`` the module class,
``data.*`` the data module), found from the ``_target_`` without importing the training layer.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mimic_runner.config.limits import SEED_MAX, check_limits
from mimic_runner.config.resources import local_n_jobs
from mimic_runner.errors import UserError

# logger factory (conf/logger/*.yaml `_target_` ends with it) -> (option, package)
TRACKER_PACKAGES = {"mlflow_logger": ("mlflow", "mlflow"), "wandb_logger": ("wandb", "wandb")}
# The values every run records without explain.val_explanations (a sweeper may optimise them).
_PLAIN_VAL_METRICS = ("val/acc", "val/auroc", "val/loss")
# Sections whose ``_target_`` class validates its own keys, and the order they are checked in.
SELF_CHECKED = ("data", "model")


def _int(cfg: DictConfig, key: str, low: int, what: str) -> int:
    value = OmegaConf.select(cfg, key, default=None)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key}={value}: {what}")
    return value


def target_class(node: Any, section: str) -> type | None:
    """The class a config section's ``_target_`` names (None without one); a path that does not
    import is one :class:`UserError` line."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return None
    from hydra.utils import get_class

    try:
        return get_class(str(target))
    except Exception as exc:  # ImportError, AttributeError, ValueError: all "no such class"
        raise UserError(f"{section}._target_={target}: no such class ({type(exc).__name__}); "
                        "check the module path") from None


def check_section(cfg: DictConfig, section: str) -> None:
    """Let the ``_target_`` class of ``cfg[section]`` check its keys (``validate_config``)."""
    node = cfg.get(section)
    cls = target_class(node, section)
    check = getattr(cls, "validate_config", None)
    if callable(check):
        check(node)


def validate(cfg: DictConfig) -> None:
    """Refuse values that would fail later (or silently do nothing), in one line each."""
    check_limits(cfg)  # sections present, interpolations, numbers, paths, memory
    seed = OmegaConf.select(cfg, "seed", default=None)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UserError(f"seed={seed}: use an integer from 0 to {SEED_MAX}")
    _int(cfg, "trainer.max_epochs", 1, "use at least 1 epoch")
    for section in SELF_CHECKED:
        check_section(cfg, section)
    size = OmegaConf.select(cfg, "data.image_size", default=None)
    minimum = int(OmegaConf.select(cfg, "backbone.min_image_size", default=16) or 16)
    if isinstance(size, int) and not isinstance(size, bool) and size < minimum:
        raise UserError(f"data.image_size={size}: backbone={cfg.backbone.name} needs at "
                        f"least {minimum} px")
    # A string such as resume=maybe would be truthy and silently resume.
    for key, allow_none in (("resume", False), ("skip_completed", True)):
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, bool) and not (value is None and allow_none):
            raise UserError(f"{key}={value}: use true or false"
                            + (" (or null for the default)" if allow_none else ""))


def check_local_launcher(cfg: DictConfig) -> None:
    """The ``local`` launcher's job count is a resolver of the hydra node: a bad value would
    surface as a traceback when Hydra resolves it; checked here, it is one line."""
    if OmegaConf.select(cfg, "launcher.name") != "local":
        return
    launcher = cfg.launcher
    local_n_jobs(launcher.get("n_jobs"), launcher.get("jobs_per_gpu", 1),
                 threads_per_job=launcher.get("cpu_threads_per_job"))


def check_trackers(cfg: DictConfig) -> None:
    """``logger=mlflow|wandb`` without its package: one line naming the extra, before a run
    trains (Lightning would raise only when the Trainer is built)."""
    node = cfg.get("logger")
    if not node:
        return
    nodes = [node] if "_target_" in node else [c for c in node.values() if c]
    for c in nodes:
        name = str(c.get("_target_", "")).rsplit(".", 1)[-1]
        if name not in TRACKER_PACKAGES:
            continue
        option, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"logger={option} needs the '{package}' package; install the "
                            "tracking extra: pip install 'mimic-runner[tracking]'")


def check_optimized_metric(cfg: DictConfig) -> None:
    """A sweeper optimises what each job returns, ``metrics[optimized_metric]``: it must be a
    validation value (choosing settings by a test value would leak the test split into the
    results reported on it), and one the runs record."""
    key = cfg.get("optimized_metric")
    if key is None:
        return  # the jobs return nothing: a plain grid (the basic sweeper ignores it)
    key = str(key)
    if not key.startswith("val/"):
        raise UserError(f"optimized_metric={key}: a sweeper may only optimise a validation "
                        "value (val/acc, val/auroc, val/objective, ...), never a test one")
    plain = key in _PLAIN_VAL_METRICS or key.startswith("val/acc_member_")
    if not plain and not OmegaConf.select(cfg, "explain.val_explanations", default=False):
        raise UserError(f"optimized_metric={key} is computed only with "
                        "explain.val_explanations=true (the validation split explained)")

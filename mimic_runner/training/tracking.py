"""Experiment trackers: the MLflow and W&B loggers as ``conf/logger/{mlflow,wandb}.yaml`` build
them, and a run's results sent to them once, at its end (:func:`log_results`).

Lightning's loggers already stream the per-epoch ``train/`` and ``val/`` values while a run
trains. What they never see is the run's final record, ``metrics.json`` (the tested checkpoint's
``val/`` values, every ``test/`` metric, the explanation metrics), nor the composed config; one
call after ``metrics.json`` is written sends both, so a tracker holds what the run folder holds.

Both packages are optional (``pip install 'mimic-runner[tracking]'``) and imported only here.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, ListConfig, OmegaConf

from mimic_runner.errors import UserError

log = logging.getLogger(__name__)

# Run facts of metrics.json that are numbers but not under a split prefix; logged as metrics.
_FACTS = ("train_seconds", "eval_seconds", "wall_seconds", "epochs", "tested_epoch")
# metrics.json strings worth filtering runs by in a tracker's UI.
_TAGS = ("model", "backbone", "dataset", "seed", "ensemble_size", "device", "nss_variant")
# MLflow's limits per log_batch call (params and tags 100, all entities 1000) and per value.
_BATCH_PARAMS, _BATCH_METRICS, _PARAM_CHARS = 100, 900, 6000


def _need(package: str, option: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise UserError(f"logger={option} needs the '{package}' package; install the tracking "
                        "extra: pip install 'mimic-runner[tracking]'")


# -- MLflow -------------------------------------------------------------------------------------

def default_mlflow_uri(runs_dir: str | os.PathLike[str]) -> str:
    """``sqlite:///<absolute runs_dir>/mlflow.db``: a store beside the runs that needs no
    server (MLflow 3 refuses to write its old ``./mlruns`` file store by default). Absolute, so
    that jobs started from other folders (SLURM, joblib workers) find the same database."""
    return f"sqlite:///{Path(runs_dir).expanduser().resolve() / 'mlflow.db'}"


def mlflow_logger(runs_dir: str, run_dir: str, tracking_uri: str | None = None,
                  experiment_name: str = "mimic-runner", run_name: str | None = None,
                  **kwargs: Any) -> Any:
    """Lightning's ``MLFlowLogger`` on ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
    :func:`default_mlflow_uri`; the MLflow run is named after the run folder."""
    _need("mlflow", "mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri(runs_dir)
    _prepare_sqlite_store(uri, experiment_name)
    return MLFlowLogger(experiment_name=experiment_name, run_name=run_name or Path(run_dir).name,
                        tracking_uri=uri, **kwargs)


def _prepare_sqlite_store(uri: str, experiment_name: str) -> None:
    """Create a SQLite store and its experiment under a file lock: the parallel jobs of a packed
    sweep would otherwise all run MLflow's schema migration on a new database at once."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    if str(db) in ("", ":memory:"):
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"logger.tracking_uri={uri}: cannot create {db.parent} ({exc.strerror})"
                        ) from None
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    with FileLock(str(db) + ".lock"):
        client = MlflowClient(tracking_uri=uri)
        if client.get_experiment_by_name(experiment_name) is None:
            client.create_experiment(experiment_name)


# -- W&B ----------------------------------------------------------------------------------------

def wandb_configured(environ: Mapping[str, str] = os.environ,
                     netrc_file: str | None = None) -> bool:
    """Whether the user set W&B up for uploads: an API key in the environment or a ``wandb
    login`` entry in ``~/.netrc`` for the W&B host."""
    if environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    try:
        return netrc.netrc(netrc_file).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(environ: Mapping[str, str] = os.environ, netrc_file: str | None = None) -> str:
    """``$WANDB_MODE`` if the user set it, ``online`` with credentials, else ``offline``: a run
    never waits on a network it was not told to use."""
    return environ.get("WANDB_MODE") or ("online" if wandb_configured(environ, netrc_file)
                                         else "offline")


def wandb_logger(run_dir: str, project: str = "mimic-runner", name: str | None = None,
                 mode: str | None = None, **kwargs: Any) -> Any:
    """Lightning's ``WandbLogger`` writing under ``<run_dir>/wandb/``, in ``mode`` (null: see
    :func:`wandb_mode`: offline unless W&B is configured); the W&B run is named after the run
    folder."""
    _need("wandb", "wandb")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    if wandb.run is not None:
        # A run left open by a failed job of the same sweep process; Lightning would reuse it.
        wandb.finish(exit_code=1)
    # No console capture, code saving or system-metrics sampler: none is needed for the
    # record, and each adds threads that slow a short run's start and exit.
    settings = wandb.Settings(console="off", silent=True, disable_code=True,
                              x_disable_stats=True, x_disable_machine_info=True)
    return WandbLogger(save_dir=run_dir, project=project, name=name or Path(run_dir).name,
                       mode=mode or wandb_mode(), settings=settings, **kwargs)


# -- the end of a run ---------------------------------------------------------------------------

def config_params(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as flat ``section.key`` → value parameters (the names of Hydra's
    overrides: ``model.lambda_consistency``); lists stay lists. A value that cannot be resolved
    outside its Hydra job keeps its ``${...}``."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for key in node:
                walk(_child(node, key), f"{prefix}{key}.")
        elif isinstance(node, ListConfig):
            out[prefix[:-1]] = OmegaConf.to_container(node, resolve=False)
        else:
            out[prefix[:-1]] = node

    walk(cfg, "")
    return out


def _text(value: Any) -> str:
    """A parameter as MLflow stores it (text), in YAML/JSON spelling: true, null, [1, 6]."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _child(node: DictConfig, key: Any) -> Any:
    try:
        return node[key]
    except Exception:  # an interpolation of another context (${hydra:...} outside a job)
        return OmegaConf.to_container(node, resolve=False)[key]


def numeric_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """metrics.json's numbers: the split metrics (``test/``, ``val/``, ``test_label/``,
    ``ref/``, ... — every key with a ``/``) and the run facts (``train_seconds``, ...), and
    apart the list metrics (``test/kld_at_k``: index k−1 → value). null and NaN are left out."""
    scalars: dict[str, float] = {}
    series: dict[str, list[float]] = {}
    for key, value in metrics.items():
        if "/" not in key and key not in _FACTS:
            continue
        if _is_number(value) and math.isfinite(value):
            scalars[key] = float(value)
        elif isinstance(value, list) and value and all(_is_number(v) for v in value):
            series[key] = [float(v) for v in value]
    return scalars, series


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def run_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    tags = {k: str(metrics[k]) for k in _TAGS if metrics.get(k) is not None}
    if metrics.get("run_dir"):
        tags["run_dir"] = str(metrics["run_dir"])
    return tags


def log_results(loggers: Iterable[Any], cfg: DictConfig, metrics: Mapping[str, Any]) -> None:
    """Send the config, metrics.json's numbers and the run folder to every MLflow and W&B
    logger of the run. A tracker that fails is a warning: metrics.json, written before, is
    the run's record, and a full sweep should not stop for a tracking server."""
    for logger in loggers:
        kind = type(logger).__name__
        if kind not in ("MLFlowLogger", "WandbLogger"):
            continue
        try:
            if kind == "MLFlowLogger":
                _log_mlflow(logger, cfg, metrics)
            else:
                _log_wandb(logger, cfg, metrics)
        except Exception as exc:
            log.warning("could not send the results to %s (%s: %s); metrics.json has them",
                        kind.removesuffix("Logger"), type(exc).__name__, exc)


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _log_mlflow(logger: Any, cfg: DictConfig, metrics: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric, Param, RunTag

    client, run_id = logger.experiment, logger.run_id
    now = int(time.time() * 1000)
    scalars, series = numeric_metrics(metrics)
    entries = [Metric(k, v, now, 0) for k, v in scalars.items()]
    # A list metric (kld_at_k) as a curve over k: step 1 is the first member alone.
    entries += [Metric(k, v, now, i + 1) for k, vs in series.items() for i, v in enumerate(vs)]
    for chunk in _chunks(entries, _BATCH_METRICS):
        client.log_batch(run_id, metrics=chunk)
    params = [Param(k, _text(v)[:_PARAM_CHARS]) for k, v in config_params(cfg).items()]
    for chunk in _chunks(params, _BATCH_PARAMS):
        client.log_batch(run_id, params=chunk)
    tags = [RunTag(k, v) for k, v in run_tags(metrics).items()]
    client.log_batch(run_id, tags=tags)


def _log_wandb(logger: Any, cfg: DictConfig, metrics: Mapping[str, Any]) -> None:
    run = logger.experiment
    scalars, series = numeric_metrics(metrics)
    run.config.update({**config_params(cfg), **run_tags(metrics)}, allow_val_change=True)
    run.summary.update({**scalars, **series})  # a list metric as a list in the summary
    run.finish()

"""Build a run's DataModule, LightningModule and Trainer from its composed Hydra config.

The same builders serve `mimic-run`, :func:`~mimic_runner.training.checkpoint.load_checkpoint`
and the tools that reload a finished run (explanations, feedback).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.plugins import CheckpointIO
from omegaconf import DictConfig, OmegaConf

from mimic_runner.data.datamodule import HDF5DataModule
from mimic_runner.errors import UserError
from mimic_runner.rundir import RunDir
from mimic_runner.training.callbacks import (
    AtomicCheckpointIO,
    ExplanationWriter,
    MemberCamSnapshot,
)
from mimic_runner.training.modules import ExplainedClassifier
from mimic_runner.traits import ModelTraits

# Class paths that checkpoints and run folders of earlier versions store, and where they live now.
LEGACY_TARGETS = {
    "mimic_runner.training.attention.AttentionBranchModule":
        "mimic_runner.training.modules.AttentionBranchModule",
}


@dataclass(frozen=True)
class DataShape:
    """What a module needs to know about its data; saved in its checkpoints."""

    in_channels: int = 1
    num_classes: int = 3
    maps: tuple[str, ...] = ("gaze", "fixations", "confounder")
    class_names: tuple[str, ...] = field(default=())
    image_size: tuple[int, int] | None = None

    @classmethod
    def of(cls, dm: HDF5DataModule) -> DataShape:
        return cls(in_channels=dm.in_channels, num_classes=dm.num_classes, maps=tuple(dm.maps),
                   class_names=tuple(dm.class_names), image_size=tuple(dm.size))


def _instantiate(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising a :class:`UserError` from inside a constructor
    as itself (Hydra wraps it in a multi-line InstantiationException)."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def build_datamodule(cfg: DictConfig) -> HDF5DataModule:
    return _instantiate(cfg.data, cache_dir=cfg.paths.cache_dir, seed=cfg.seed, _convert_="all")


def backbone_factory(cfg: DictConfig) -> tuple[Any, int]:
    """The backbone config as a factory ``f(in_channels=...)`` and its explained stage index."""
    bb = OmegaConf.to_container(cfg.backbone, resolve=True)
    if not isinstance(bb, dict):
        raise UserError("backbone: expected a mapping; choose an option of the backbone group")
    explain_layer = int(bb.pop("explain_layer", -1))
    bb.pop("min_image_size", None)  # checked by config.validate, not a constructor argument
    bb.pop("cpu_channels_last", None)  # read by default_channels_last
    bb["_partial_"] = True
    return instantiate(bb), explain_layer


def default_channels_last(cfg: DictConfig) -> dict[str, bool]:
    """``model.channels_last`` when the config leaves it out: on for a backbone with
    ``cpu_channels_last: true`` (small_cnn) in a run on the CPU of a model measured there
    (``model.traits.channels_last_default``: the baseline, the ensembles with the loop
    strategy), where NHWC weights made steps 1.35-1.43x faster; off elsewhere (NHWC slows the
    batched ``wide`` ensemble; the U-Net and GPUs are not measured).
    ``++model.channels_last=true|false`` decides."""
    if "channels_last" in cfg.model or not cfg.backbone.get("cpu_channels_last", False):
        return {}
    if not ModelTraits.of(cfg.model.get("traits")).channels_last_default:
        return {}
    if str(cfg.model.get("ensemble_impl", "auto")) not in ("auto", "loop"):
        return {}
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator == "auto":
        import torch

        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return {"channels_last": True} if accelerator == "cpu" else {}


def build_module(cfg: DictConfig, data: HDF5DataModule | DataShape) -> ExplainedClassifier:
    """The LightningModule of ``cfg.model`` for data of this shape. The module describes
    itself (its model, backbone and explain settings and the data's shape, as its
    hyper-parameters, in every checkpoint it writes), so that
    :func:`~mimic_runner.training.checkpoint.load_checkpoint` needs nothing else."""
    shape = data if isinstance(data, DataShape) else DataShape.of(data)
    factory, explain_layer = backbone_factory(cfg)
    model_cfg = cfg.model
    if model_cfg.get("_target_") in LEGACY_TARGETS:
        model_cfg = OmegaConf.merge(model_cfg, {"_target_": LEGACY_TARGETS[model_cfg._target_]})
    return _instantiate(
        model_cfg, backbone=factory, in_channels=shape.in_channels,
        num_classes=shape.num_classes, maps=tuple(shape.maps),
        explain_target=cfg.explain.target, explain_layer=explain_layer,
        nss_variant=cfg.explain.nss_variant, class_names=tuple(shape.class_names),
        image_size=shape.image_size, _convert_="all", **default_channels_last(cfg))


def build_trainer(cfg: DictConfig, run_dir: Path, module: ExplainedClassifier,
                  devices: list[int] | None = None, loggers: list[Any] | None = None
                  ) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured callbacks and loggers plus the run's
    artefact writers; ``devices`` overrides ``trainer.devices`` (a launcher's GPU slot)."""
    rd = RunDir(run_dir)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    callbacks.append(ExplanationWriter(rd))
    if module.traits.is_ensemble and cfg.explain.member_cam_epochs:
        callbacks.append(MemberCamSnapshot(rd, epochs=list(cfg.explain.member_cam_epochs)))
    extra = {"devices": devices} if devices is not None else {}
    # Checkpoints go to a temporary name in their folder, then renamed (AtomicCheckpointIO).
    configured = OmegaConf.select(cfg, "trainer.plugins", default=None)
    plugins = [instantiate(p) for p in (configured or [])]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    # Inside a SLURM job submitit owns the signals (requeue on time-out or preemption, with a
    # result for the launching process); Lightning's own auto-requeue handlers would compete.
    from lightning.pytorch.plugins.environments import ClusterEnvironment, SLURMEnvironment

    if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment)
                                             for p in plugins):
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                       plugins=plugins, _convert_="all", **extra)


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The configured Lightning loggers (none, one, or several under ``logger.<name>``)."""
    if not cfg.get("logger"):
        return []
    if "_target_" in cfg.logger:
        return [instantiate(cfg.logger)]
    return [instantiate(c) for c in cfg.logger.values() if c is not None and "_target_" in c]

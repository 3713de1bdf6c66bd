"""Build a run's DataModule, LightningModule and Trainer from its composed Hydra config.

The same builders serve `mimic-run` and the tools that reload a finished run (explanations,
feedback), so a run directory's `.hydra/config.yaml` is all that is needed to rebuild it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mimic_runner.data.datamodule import HDF5DataModule
from mimic_runner.errors import UserError
from mimic_runner.training.callbacks import ExplanationWriter, MemberCamSnapshot
from mimic_runner.training.modules import ExplainedClassifier


def _instantiate(cfg: Any, what: str, **kwargs: Any) -> Any:
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
    return _instantiate(cfg.data, "data", cache_dir=cfg.paths.cache_dir, seed=cfg.seed,
                        _convert_="all")


def backbone_factory(cfg: DictConfig) -> tuple[Any, int]:
    """The backbone config as a factory ``f(in_channels=...)`` and its explained stage index."""
    bb = OmegaConf.to_container(cfg.backbone, resolve=True)
    assert isinstance(bb, dict)
    explain_layer = int(bb.pop("explain_layer", -1))
    bb.pop("name_for_runs", None)
    bb["_partial_"] = True
    return instantiate(bb), explain_layer


def build_module(cfg: DictConfig, dm: HDF5DataModule) -> ExplainedClassifier:
    factory, explain_layer = backbone_factory(cfg)
    return _instantiate(
        cfg.model, "model", backbone=factory, in_channels=dm.in_channels,
        num_classes=dm.num_classes, maps=tuple(dm.maps), explain_target=cfg.explain.target,
        explain_layer=explain_layer, nss_variant=cfg.explain.nss_variant, _convert_="all")


def build_trainer(cfg: DictConfig, run_dir: Path, module: ExplainedClassifier) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    callbacks.append(ExplanationWriter(run_dir / "explanations.h5"))
    if module.ensemble_size > 1 and cfg.explain.member_cam_epochs:
        callbacks.append(MemberCamSnapshot(run_dir / "member_cams.h5",
                                           epochs=list(cfg.explain.member_cam_epochs)))
    logger = instantiate(cfg.logger) if cfg.logger else False
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, _convert_="all")

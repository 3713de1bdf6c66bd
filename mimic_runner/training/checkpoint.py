"""Checkpoints that describe themselves: :func:`load_checkpoint` needs nothing but the file.

Every module saves, as its Lightning hyper-parameters, the ``model``, ``backbone`` and
``explain`` config sections and the data's shape (channels, classes, maps, class names, image
size), written by the module itself from its constructor arguments
(:mod:`mimic_runner.training.modules.describe`), however it was built; its checkpoints also
hold the data's normalisation. That is what it takes to rebuild the network, as
lightning-hydra-template's ``save_hyperparameters`` does, without pickling any code.
Checkpoints of earlier versions (the builders saved the resolved config sections) have the
same form and load alike.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mimic_runner.errors import UserError
from mimic_runner.training.builders import DataShape, build_module
from mimic_runner.training.modules import ExplainedClassifier


class UnreadableCheckpoint(UserError):
    """A file that is no readable Lightning checkpoint; ``reason`` says why in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict; one :class:`UnreadableCheckpoint` line when the file is not one.
    ``mmap``: map the tensors instead of reading them (to look at the index only)."""
    p = Path(path)
    if not p.is_file():
        raise UnreadableCheckpoint(f"{p}: no such checkpoint file", "no such file")
    try:
        # Lightning checkpoints hold optimizer and loop states besides tensors, so the file is
        # unpickled in full: load only checkpoints you (or your colleagues) wrote.
        ckpt = torch.load(p, map_location="cpu", weights_only=False, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            AttributeError, ModuleNotFoundError, OSError) as exc:
        reason = " ".join(str(exc).split())[:80] or type(exc).__name__
        raise UnreadableCheckpoint(f"{p}: not a readable checkpoint ({type(exc).__name__}); "
                                   "pass a .ckpt file written by mimic-run", reason) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UnreadableCheckpoint(f"{p}: not a Lightning checkpoint (no state_dict); pass a "
                                   ".ckpt file written by mimic-run", "not a Lightning checkpoint")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], path: str | Path) -> tuple[Any, DataShape]:
    """The config sections and data shape a checkpoint was trained with."""
    hp = ckpt.get("hyper_parameters") or {}
    if "config" not in hp or "data" not in hp:
        raise UserError(f"{path}: this checkpoint does not describe its model (written before "
                        "mimic-runner 0.2); load it with mimic_runner.load_run(RUN_DIR)")
    if hp.get("undescribed"):
        raise UserError(f"{path}: this checkpoint's module was built with "
                        f"{', '.join(map(str, hp['undescribed']))} that no config can describe "
                        "(a lambda or an object, not a functools.partial of an importable "
                        "callable); build the module in code and load_state_dict the checkpoint's "
                        "state_dict")
    data = dict(hp["data"])
    data["maps"] = tuple(data.get("maps") or ())
    data["class_names"] = tuple(data.get("class_names") or ())
    if data.get("image_size") is not None:
        data["image_size"] = tuple(data["image_size"])
    return OmegaConf.create(dict(hp["config"])), DataShape(**data)


def module_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> ExplainedClassifier:
    """Rebuild the module a checkpoint dict describes and load its weights (eval mode, CPU)."""
    cfg, shape = checkpoint_config(ckpt, path)
    module = build_module(cfg, shape)
    module.load_state_dict(ckpt["state_dict"])
    norm = ckpt.get("input_normalisation")
    module.input_normalisation = (None if norm is None else
                                  (torch.tensor(norm["mean"]), torch.tensor(norm["std"])))
    return module.eval()


def is_self_describing(ckpt: dict[str, Any]) -> bool:
    hp = ckpt.get("hyper_parameters") or {}
    return "config" in hp and "data" in hp


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> ExplainedClassifier:
    """The trained LightningModule of a checkpoint file, in eval mode on ``map_location``.

    Works on a file copied anywhere: the model, backbone and data shape come from the
    checkpoint itself. ``module.hparams.data`` holds the class names and image size;
    ``module.input_normalisation`` the (mean, std) the run normalised its inputs with (or None).
    """
    return module_from_checkpoint(read_checkpoint(path), path).to(map_location)

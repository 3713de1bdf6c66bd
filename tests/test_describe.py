"""Modules describe themselves: a module built directly (not through the builders) saves the
config sections and data shape load_checkpoint rebuilds it from; a module built from a config
saves that config's model keys unchanged; checkpoints in the earlier form (the builders' resolved
sections) still load; a factory no config can describe is one line at load time."""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from mimic_runner.errors import UserError
from mimic_runner.models.backbones import build_backbone
from mimic_runner.training.builders import DataShape, build_module
from mimic_runner.training.checkpoint import load_checkpoint
from mimic_runner.training.modules import EnsembleModule, ExplainedClassifier
from mimic_runner.training.modules.describe import NotDescribable, factory_config, import_path

SHAPE = DataShape(in_channels=1, num_classes=3, maps=("gaze", "fixations"),
                  class_names=("a", "b", "c"), image_size=(32, 32))


def save(module: ExplainedClassifier, path: Path, hparams: dict[str, Any] | None = None) -> Path:
    """What Lightning writes for the module, as far as load_checkpoint reads it."""
    torch.save({"state_dict": module.state_dict(),
                "hyper_parameters": dict(module.hparams) if hparams is None else hparams}, path)
    return path


def same_outputs(a: ExplainedClassifier, b: ExplainedClassifier) -> bool:
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x).logits, b.eval()(x).logits)


def direct_ensemble(**kw: Any) -> EnsembleModule:
    torch.manual_seed(0)
    args: dict[str, Any] = dict(
        backbone=functools.partial(build_backbone, name="small_cnn", pretrained=False),
        in_channels=1, num_classes=3, name="my_ensemble", ensemble_size=2,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        maps=("gaze",), class_names=("a", "b", "c"), consistency="pairwise",
        lambda_consistency=2.5, image_size=(32, 32))
    return EnsembleModule(**{**args, **kw})


def test_a_module_built_directly_describes_itself(tmp_path: Path) -> None:
    module = direct_ensemble()
    hp = module.hparams
    assert set(hp) == {"config", "data"}
    model = hp["config"]["model"]
    assert model["_target_"] == "mimic_runner.training.modules.EnsembleModule"
    assert model["optimizer"] == {"_target_": "torch.optim.SGD", "_partial_": True,
                                  "lr": 0.05, "momentum": 0.9}
    assert model["scheduler"] is None
    assert (model["consistency"], model["lambda_consistency"], model["ensemble_size"]) == (
        "pairwise", 2.5, 2)
    assert hp["config"]["backbone"] == {"_target_": "mimic_runner.models.backbones.build_backbone",
                                        "name": "small_cnn", "pretrained": False,
                                        "explain_layer": -1}
    assert hp["config"]["explain"] == {"target": "pred", "nss_variant": "auto"}
    assert hp["data"] == {"in_channels": 1, "num_classes": 3, "maps": ("gaze",),
                          "class_names": ("a", "b", "c"), "image_size": (32, 32)}

    loaded = load_checkpoint(save(module, tmp_path / "direct.ckpt"))
    assert type(loaded) is EnsembleModule
    assert (loaded.ensemble_size, loaded.consistency, loaded.lambda_consistency) == (2, "pairwise",
                                                                                      2.5)
    assert loaded.hparams["config"] == hp["config"]
    assert same_outputs(module, loaded)
    opt = loaded.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


@pytest.mark.parametrize("model", ["baseline", "expl_ensemble", "improved_unet",
                                   "attention_branch"])
def test_a_module_built_from_a_config_keeps_its_model_keys(compose, model: str) -> None:  # type: ignore[no-untyped-def]
    cfg = compose(f"model={model}", "trainer=smoke", "++model.ensemble_size=2"
                  if "ensemble" in model else "seed=0")
    hp = build_module(cfg, SHAPE).hparams
    assert set(hp) == {"config", "data"}
    resolved: Any = {k: OmegaConf.to_container(cfg[k], resolve=True)
                     for k in ("model", "backbone", "explain")}
    saved = hp["config"]
    assert {k: saved["model"][k] for k in resolved["model"]} == resolved["model"]
    for key in ("_target_", "name", "pretrained", "explain_layer"):
        assert saved["backbone"][key] == resolved["backbone"][key]
    assert saved["explain"] == {"target": resolved["explain"]["target"],
                                "nss_variant": resolved["explain"]["nss_variant"]}
    assert hp["data"] == asdict(SHAPE)


def test_checkpoints_of_the_earlier_form_still_load(compose, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = compose("model=expl_ensemble", "trainer=smoke", "model.ensemble_size=2")
    module = build_module(cfg, SHAPE)
    # Before modules described themselves, the builders saved the resolved config sections.
    earlier = {"config": {k: OmegaConf.to_container(cfg[k], resolve=True)
                          for k in ("model", "backbone", "explain")},
               "data": asdict(SHAPE)}
    loaded = load_checkpoint(save(module, tmp_path / "old.ckpt", earlier))
    assert type(loaded) is EnsembleModule and loaded.ensemble_size == 2
    assert same_outputs(module, loaded)


def test_a_factory_no_config_describes_is_one_line_at_load(tmp_path: Path) -> None:
    module = direct_ensemble(backbone=lambda in_channels: build_backbone(
        "small_cnn", in_channels=in_channels))
    assert module.hparams["undescribed"] == ["backbone"]
    with pytest.raises(UserError, match="built with backbone that no config can describe") as e:
        load_checkpoint(save(module, tmp_path / "lambda.ckpt"))
    assert "\n" not in str(e.value)


def test_factory_config_and_import_path() -> None:
    assert import_path(torch.optim.Adam) == "torch.optim.Adam"
    assert import_path(torch.optim.lr_scheduler.CosineAnnealingLR) == (
        "torch.optim.lr_scheduler.CosineAnnealingLR")
    assert factory_config(torch.optim.Adam) == {"_target_": "torch.optim.Adam", "_partial_": True}
    assert factory_config(None) is None
    for bad in (lambda: None, functools.partial(torch.optim.Adam, 0.1),
                functools.partial(torch.optim.Adam, lr=torch.tensor(0.1))):
        with pytest.raises(NotDescribable):
            factory_config(bad)

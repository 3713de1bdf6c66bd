"""One training step of the real LightningModules, as a callable to time.

A step is what Lightning's automatic optimisation does per batch: ``training_step`` (forward,
loss — including the differentiable Grad-CAM consistency term of ``expl_ensemble`` — and the
module's train-accuracy update), ``zero_grad``, ``backward``, ``optimizer.step``. Modules are built
from the shipped Hydra configs with the same builder as ``mimic-run``; batches are random tensors
with the default data's shapes (so the step time does not include data loading, measured
separately).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mimic_runner.training.builders import DataShape
from mimic_runner.traits import ModelTraits

DEFAULT_SHAPE = DataShape()  # the default data's (synth_cxr's) shapes
# The models measured by default: the paper's Table 1 (any model option can be named).
DEFAULT_MODELS = ("baseline", "improved_unet", "normal_ensemble", "expl_ensemble")
PRECISIONS = ("32-true", "bf16-mixed")


def compose_config(overrides: Sequence[str], config_dirs: Sequence[str | Path] = ()) -> Any:
    """The run config ``mimic-run`` would see with ``overrides`` (the shipped ``conf/`` plus
    ``config_dirs``, as ``--config-dir``)."""
    from mimic_runner.config import compose

    return compose(overrides, config_dirs=config_dirs)


def model_options(config_dirs: Sequence[str | Path] = ()) -> list[str]:
    """Every model option of the config group (``conf/model/`` and the ``config_dirs``')."""
    from mimic_runner.config import group_options

    return sorted(group_options("model", [Path(d) for d in config_dirs]) - {"default"})


@functools.lru_cache(maxsize=64)
def _traits(model: str, config_dirs: tuple[str, ...]) -> ModelTraits:
    return ModelTraits.of(compose_config([f"model={model}"], config_dirs).model.get("traits"))


def model_traits(model: str, config_dirs: Sequence[str | Path] = ()) -> ModelTraits:
    """A model option's traits (``model.traits`` of its composed config)."""
    return _traits(model, tuple(str(d) for d in config_dirs))


def model_overrides(model: str, backbone: str, ensemble_size: int | None = None,
                    impl: str | None = None, channels_last: bool = False,
                    config_dirs: Sequence[str | Path] = ()) -> list[str]:
    """Hydra overrides selecting a model, backbone, memory format and (for ensembles) N and
    the strategy."""
    ov = [f"model={model}", f"backbone={backbone}"]
    # Always explicit: without it, small_cnn on the CPU gets channels-last by default.
    ov.append(f"++model.channels_last={'true' if channels_last else 'false'}")
    if model_traits(model, config_dirs).is_ensemble:
        if ensemble_size is not None:
            ov.append(f"model.ensemble_size={ensemble_size}")
        if impl is not None:
            ov.append(f"model.ensemble_impl={impl}")
    return ov


def build_module(overrides: Sequence[str], shape: DataShape = DEFAULT_SHAPE,
                 config_dirs: Sequence[str | Path] = ()) -> Any:
    """The LightningModule of ``mimic-run <overrides>`` (via ``training.builders``)."""
    from mimic_runner.training.builders import build_module as _build

    return _build(compose_config(overrides, config_dirs), shape)


def random_batch(batch_size: int, size: int, shape: DataShape = DEFAULT_SHAPE,
                 device: torch.device | str = "cpu", seed: int = 0) -> dict[str, Tensor]:
    """A batch as the DataModule delivers it after transfer: normalised ``image`` (B, C, S, S),
    ``label`` (B,), ``index`` (B,), ``gaze`` (B, S, S) float, bool ``fixations``/``confounder``."""
    g = torch.Generator().manual_seed(seed)
    b, s = batch_size, size
    batch = {
        "image": torch.randn(b, shape.in_channels, s, s, generator=g),
        "label": torch.randint(0, shape.num_classes, (b,), generator=g),
        "index": torch.arange(b),
    }
    if "gaze" in shape.maps:
        batch["gaze"] = torch.rand(b, s, s, generator=g)
    for key in ("fixations", "confounder"):
        if key in shape.maps:
            batch[key] = torch.rand(b, s, s, generator=g) > 0.9
    return {k: v.to(device) for k, v in batch.items()}


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Lightning's ``bf16-mixed`` (autocast of the forward/loss only) or nothing (``32-true``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}': use one of {', '.join(PRECISIONS)}")
    if precision == "bf16-mixed":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """``self.log`` without a Trainer warns and returns; the benchmark calls it on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        warnings.filterwarnings("ignore", message=".*self.trainer.*")
        yield


@dataclass
class TrainStep:
    """A LightningModule, its optimizer and a batch: ``step()`` runs one training step.

    ``channels_last`` only records how the module was built (``model.channels_last``).
    """

    module: Any
    batch: dict[str, Tensor]
    device: torch.device
    precision: str = "32-true"
    channels_last: bool = False
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.module.to(self.device).train()
        opt = self.module.configure_optimizers()
        self.optimizer = opt["optimizer"] if isinstance(opt, dict) else opt

    def step(self) -> Tensor:
        with quiet_logging(), autocast(self.device, self.precision):
            loss = self.module.training_step(self.batch, 0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self) -> None:
        self.step()


def make_step(model: str, backbone: str, device: torch.device | str = "cpu",
              ensemble_size: int | None = None, impl: str | None = None,
              batch_size: int = 32, size: int = 128, precision: str = "32-true",
              channels_last: bool = False, shape: DataShape = DEFAULT_SHAPE,
              seed: int = 0, config_dirs: Sequence[str | Path] = ()) -> TrainStep:
    """Build the module for ``model``/``backbone`` (seeded) and a matching batch on ``device``."""
    torch.manual_seed(seed)
    # channels_last: the modules' own option (NHWC weights); the batch stays NCHW as loaded.
    module = build_module(model_overrides(model, backbone, ensemble_size, impl, channels_last,
                                          config_dirs), shape, config_dirs)
    batch = random_batch(batch_size, size, shape, device, seed)
    return TrainStep(module, batch, torch.device(device), precision, channels_last)

"""The options of ``mimic-explain global`` and ``mimic-explain peppr``, checked in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mimic_runner.data.schema import SPLITS
from mimic_runner.errors import UserError
from mimic_runner.explain.global_maps import GROUP_BY, NORMALIZATIONS
from mimic_runner.explain.peppr import METRICS
from mimic_runner.rundir import RunDir

FILLS = ("mean", "mean_image", "zero", "blur")
RANKINGS = ("global", "class", "local")
DEVICES = ("auto", "cpu", "cuda")
MIN_STEPS, MAX_STEPS = 2, 1001


@dataclass
class ExplainOptions:
    """What both commands share (the CLI's options, checked by :meth:`validate`)."""

    run_dir: Path
    split: str = "test"
    group_by: str = "label"
    normalize: str = "sum"
    checkpoint: str = "best"
    device: str = "auto"
    batch_size: int = 128
    recompute: bool = False
    out_dir: Path | None = None
    max_images: int | None = None

    def validate(self) -> None:
        if self.split not in SPLITS:
            raise UserError(f"--split {self.split}: use one of {', '.join(SPLITS)}")
        if self.group_by not in GROUP_BY:
            raise UserError(f"--group-by {self.group_by}: use one of {', '.join(GROUP_BY)}")
        if self.normalize not in NORMALIZATIONS:
            raise UserError(f"--normalize {self.normalize}: use one of "
                            f"{', '.join(NORMALIZATIONS)}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.max_images is not None and self.max_images < 1:
            raise UserError(f"--max-images {self.max_images}: must be at least 1")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise UserError(f"--device {self.device}: use auto, cpu or cuda")

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def out(self) -> Path:
        return self.out_dir if self.out_dir is not None else self.run_dir


@dataclass
class PepprOptions(ExplainOptions):
    fill: str = "mean"
    steps: int = 21
    random_seeds: int = 3
    ranking: str = "global"
    local_control: bool = True
    blur_sigma: float | None = None
    metric: str = "accuracy"
    random_patch: int | None = None  # None: about 1/16 of the image side

    def validate(self) -> None:
        super().validate()
        if not MIN_STEPS <= self.steps <= MAX_STEPS:
            raise UserError(f"--steps {self.steps}: use {MIN_STEPS}..{MAX_STEPS} grid points "
                            "(21 = every 5 %)")
        if self.fill not in FILLS:
            raise UserError(f"--fill {self.fill}: use one of {', '.join(FILLS)}")
        if self.ranking not in RANKINGS:
            raise UserError(f"--ranking {self.ranking}: use one of {', '.join(RANKINGS)}")
        if not 0 <= self.random_seeds <= 100:
            raise UserError(f"--random-seeds {self.random_seeds}: use 0..100")
        if self.blur_sigma is not None and self.blur_sigma <= 0:
            raise UserError(f"--blur-sigma {self.blur_sigma}: must be positive")
        if self.random_patch is not None and self.random_patch < 1:
            raise UserError(f"--random-patch {self.random_patch}: must be at least 1 pixel")
        if self.metric not in METRICS:
            raise UserError(f"--metric {self.metric}: use one of {', '.join(METRICS)}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)

"""LightningModule of the gaze-supervised U-Net (``model=improved_unet``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from mimic_runner.errors import UserError
from mimic_runner.models.classifier import BackboneFactory
from mimic_runner.models.output import ModelOutput
from mimic_runner.models.unet import UNetNet
from mimic_runner.training.modules.base import ExplainedClassifier
from mimic_runner.traits import ModelTraits


class UNetModule(ExplainedClassifier):
    """Gaze-supervised U-Net: ``γ·CE + (1−γ)·gaze_loss`` (Karargyris et al. 2021).

    ``gaze_loss``: ``bce`` (default, BCE-with-logits against the heatmap scaled to [0, 1] per
    image, as in the EGD code) or ``kl`` (KL(gaze ‖ softmax of the logits over pixels)).
    """

    default_traits: ClassVar[ModelTraits] = ModelTraits(trains_explanation="gaze", takes_gaze=True)

    def __init__(self, *args: Any, gamma: float = 0.41731, gaze_loss: str = "bce",
                 decoder_channels: tuple[int, ...] = (128, 64, 32, 16), **kwargs: Any) -> None:
        self.validate_config({"gaze_loss": gaze_loss,
                              "ensemble_size": kwargs.get("ensemble_size", 1)})
        self.decoder_channels = tuple(decoder_channels)
        super().__init__(*args, **kwargs)
        self.gamma = gamma
        self.gaze_loss = gaze_loss

    @classmethod
    def validate_config(cls, model_cfg: Mapping[str, Any]) -> None:
        super().validate_config(model_cfg)
        gaze_loss = model_cfg.get("gaze_loss", "bce")
        if gaze_loss not in ("bce", "kl"):
            raise UserError(f"model.gaze_loss='{gaze_loss}': use bce or kl")

    def build_net(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                  explain_layer: int) -> nn.Module:
        return UNetNet(backbone, in_channels, num_classes, decoder_channels=self.decoder_channels)

    def loss(self, out: ModelOutput, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ce = F.cross_entropy(out.logits, batch["label"])
        seg_logits = out.extras["gaze_logits"].squeeze(1)
        gaze = batch["gaze"].float()
        if self.gaze_loss == "bce":
            peak = gaze.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
            seg = F.binary_cross_entropy_with_logits(seg_logits, gaze / peak)
        else:
            target = gaze.flatten(1)
            target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
            logq = seg_logits.flatten(1).log_softmax(-1)
            seg = (target * (target.clamp_min(1e-12).log() - logq)).sum(-1).mean()
        return self.gamma * ce + (1 - self.gamma) * seg, {"ce": ce.detach(),
                                                                "gaze_loss": seg.detach()}

"""Single classifier (the paper's baseline): backbone -> global average pool -> linear."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from mimic_runner.models.backbones import Backbone
from mimic_runner.models.output import ModelOutput

BackboneFactory = Callable[..., Backbone]


class ClassifierNet(nn.Module):
    """``forward(x)`` returns the logits (B, K) and the last feature map (B, C, h, w)."""

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone(in_channels=in_channels)
        self.head = nn.Linear(self.backbone.out_channels, num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.backbone(x)
        logits = self.head(features.mean(dim=(-2, -1)))
        return ModelOutput(logits=logits, features=features)

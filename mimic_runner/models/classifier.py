"""Single classifier (the paper's baseline): backbone -> global average pool -> linear."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from mimic_runner.models.backbones import Backbone
from mimic_runner.models.output import ModelOutput

BackboneFactory = Callable[..., Backbone]


class ClassifierNet(nn.Module):
    """``forward(x)`` returns the logits (B, K) and the last feature map (B, C, h, w)."""

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                 explain_layer: int = -1) -> None:
        super().__init__()
        self.backbone = backbone(in_channels=in_channels)
        self.explain_layer = self.backbone.stage_index(explain_layer)
        self.head = nn.Linear(self.backbone.out_channels, num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.backbone.forward_to(x, self.explain_layer)
        last = self.backbone.forward_from(features, self.explain_layer)
        logits = self.head(last.mean(dim=(-2, -1)))
        return ModelOutput(logits=logits, features=features)

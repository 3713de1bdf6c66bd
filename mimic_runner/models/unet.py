"""The gaze-supervised U-Net of the eye-gaze paper (Karargyris et al. 2021; the "Improved UNet").

Encoder = the configured backbone's stages; a decoder with skip connections regresses the static
gaze heatmap at the input's resolution; the classifier reads the bottleneck (the encoder's last
stage), which is also the layer Grad-CAM explains, as for every other model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimic_runner.models.classifier import BackboneFactory
from mimic_runner.models.output import ModelOutput


class _DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin + cskip, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class UNetNet(nn.Module):
    """``forward(x)`` -> ModelOutput with ``extras["gaze_logits"]`` (B, 1, H, W)."""

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                 decoder_channels: Sequence[int] = (128, 64, 32, 16)) -> None:
        super().__init__()
        self.encoder = backbone(in_channels=in_channels)
        skips = self.encoder.stage_channels[:-1][::-1]  # deepest skip first
        blocks, cin = [], self.encoder.out_channels
        for i, skip_c in enumerate(skips):
            cout = decoder_channels[min(i, len(decoder_channels) - 1)]
            blocks.append(_DecoderBlock(cin, skip_c, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.seg_head = nn.Conv2d(cin, 1, 1)
        self.head = nn.Linear(self.encoder.out_channels, num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        stages = self.encoder.forward_stages(x)
        features = stages[-1]
        y = features
        for block, skip in zip(self.decoder, stages[:-1][::-1]):
            y = block(y, skip)
        gaze_logits = F.interpolate(self.seg_head(y), size=x.shape[-2:], mode="bilinear",
                                    align_corners=False)
        logits = self.head(features.mean(dim=(-2, -1)))
        return ModelOutput(logits=logits, features=features, extras={"gaze_logits": gaze_logits})

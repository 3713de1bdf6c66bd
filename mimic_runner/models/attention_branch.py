"""Attention-branch network (Fukui et al., CVPR 2019) with its attention map right after the input.

As in the human-feedback work of Adhikari et al. (TNO), the attention map ``M(x)`` lives at the
input's resolution, so that a clinician can correct it pixel by pixel and the corrected map can
enter the loss:

* **attention branch** — a small conv encoder on the image, a ``K``-channel class-evidence map
  (one channel per class, ABN's "attention" block), read two ways: global average pooling gives
  the attention branch's own class logits (ABN's attention-branch classifier, trained with its own
  cross-entropy), and a 1x1 conv + BatchNorm gives one channel whose bilinear upsampling to the
  input size, through a sigmoid, is ``M(x)`` in ``[0, 1]`` with shape (B, 1, H, W);
* **perception branch** — the configured backbone and a linear head on ``(1 + M) ⊙ x`` (ABN's
  residual attention mechanism: ``M = 0`` leaves the input unchanged, so a poor map cannot blank
  it out), or on ``(1 + M) ⊙ f_s(x)`` for the features of an early backbone stage ``s``.

Grad-CAM stays available: ``features`` is the perception backbone's explained stage, as for
every other network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mimic_runner.errors import UserError
from mimic_runner.models.classifier import BackboneFactory
from mimic_runner.models.output import ModelOutput


def parse_apply_at(apply_at: str | int) -> int | None:
    """``"input"`` -> None (apply to the image), an int (or its string) -> that backbone stage."""
    if isinstance(apply_at, str):
        if apply_at == "input":
            return None
        try:
            return int(apply_at)
        except ValueError:
            raise UserError(f"model.apply_at='{apply_at}': use input or a backbone stage "
                            "index (0 = the first stage)") from None
    return int(apply_at)


def apply_attention(x: Tensor, attention: Tensor) -> Tensor:
    """ABN's residual attention: ``(1 + M) ⊙ x``.

    Args:
        x: (B, C, h, w) image or feature map.
        attention: (B, 1, H, W) map in [0, 1]; resized bilinearly to (h, w) when it differs.

    Returns:
        (B, C, h, w) tensor.
    """
    if attention.shape[-2:] != x.shape[-2:]:
        attention = F.interpolate(attention, size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
    return (1 + attention) * x


class AttentionBranch(nn.Module):
    """Conv encoder -> K class-evidence maps -> (class logits via GAP, attention logits map).

    ``channels[i]`` is the width of encoder block i (conv3x3-BN-ReLU). The first two blocks
    halve the resolution, the later ones keep it and dilate (2, 4, 8, ...): the map stays at a
    quarter of the input's resolution (32x32 at 128 px), fine enough for regions drawn by hand,
    while the receptive field grows enough for the branch's own classifier to learn (without
    the dilation it stays near chance on the synthetic chest X-rays).
    """

    def __init__(self, in_channels: int, num_classes: int,
                 channels: Sequence[int] = (16, 32, 32, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, c in enumerate(channels):
            stride, dilation = (2, 1) if i < 2 else (1, 2 ** (i - 1))
            layers += [nn.Conv2d(cin, c, 3, stride=stride, padding=dilation, dilation=dilation,
                                 bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c
        self.encoder = nn.Sequential(*layers)
        self.class_maps = nn.Sequential(nn.Conv2d(cin, num_classes, 1, bias=False),
                                        nn.BatchNorm2d(num_classes), nn.ReLU(inplace=True))
        self.class_head = nn.Conv2d(num_classes, num_classes, 1)
        self.map_head = nn.Sequential(nn.Conv2d(num_classes, 1, 1, bias=False), nn.BatchNorm2d(1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> class logits (B, K) and attention logits (B, 1, h, w)."""
        k = self.class_maps(self.encoder(x))
        logits = self.class_head(k).mean(dim=(-2, -1))
        return logits, self.map_head(k)


class AttentionBranchNet(nn.Module):
    """``forward(x)`` -> ModelOutput with the perception branch's logits and features, and
    ``extras["attention"]`` (B, 1, H, W) in [0, 1], ``extras["attention_logits"]`` (B, K)."""

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                 explain_layer: int = -1, apply_at: str | int = "input",
                 attention_channels: Sequence[int] = (16, 32, 32, 32)) -> None:
        super().__init__()
        self.attention_branch = AttentionBranch(in_channels, num_classes, attention_channels)
        self.backbone = backbone(in_channels=in_channels)
        self.explain_layer = self.backbone.stage_index(explain_layer)
        stage = parse_apply_at(apply_at)
        if stage is not None:
            n = len(self.backbone.stages)
            if not 0 <= stage < n:
                raise UserError(f"model.apply_at={stage}: this backbone has {n} stages (use "
                                f"input or 0..{n - 1})")
        self.apply_stage = stage
        self.head = nn.Linear(self.backbone.out_channels, num_classes)

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The attention map (B, 1, H, W) in [0, 1] and the attention branch's logits (B, K)."""
        att_logits, map_logits = self.attention_branch(x)
        # Upsample the logits, not the sigmoid, so the map is smooth and still within (0, 1).
        m = F.interpolate(map_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return m.sigmoid(), att_logits

    def forward(self, x: Tensor) -> ModelOutput:
        attention, att_logits = self.attention(x)
        y = apply_attention(x, attention) if self.apply_stage is None else x
        features = y
        for i, stage in enumerate(self.backbone.stages):
            y = stage(y)
            if i == self.apply_stage:
                y = apply_attention(y, attention)
            if i == self.explain_layer:
                features = y
        logits = self.head(y.mean(dim=(-2, -1)))
        return ModelOutput(logits=logits, features=features,
                           extras={"attention": attention, "attention_logits": att_logits})

"""Backbones: a CPU-friendly small CNN and torchvision classics, adapted to 1 or 3 channels.

Every backbone maps (B, C_in, H, W) to a list of stage feature maps, coarse last; the last one is
what Grad-CAM explains and what the classification head pools. The U-Net decoder uses them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mimic_runner.errors import UserError

BACKBONES = ("small_cnn", "resnet18", "resnet50", "densenet121", "efficientnet_b0")


class Backbone(nn.Module):
    """Base class: ``stages`` run in order; ``stage_channels[i]`` is stage i's output width."""

    stage_channels: list[int]

    def __init__(self, stages: Sequence[nn.Module], stage_channels: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(stage_channels)

    @property
    def out_channels(self) -> int:
        return self.stage_channels[-1]

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def stage_index(self, layer: int) -> int:
        """A (possibly negative) stage index as a positive one, checked."""
        k = layer if layer >= 0 else len(self.stages) + layer
        if not 0 <= k < len(self.stages):
            from mimic_runner.errors import UserError

            raise UserError(f"backbone.explain_layer={layer}: this backbone has "
                            f"{len(self.stages)} stages (use 0..{len(self.stages) - 1} or -1)")
        return k

    def forward_to(self, x: Tensor, layer: int) -> Tensor:
        """Run stages 0..layer (inclusive)."""
        for stage in self.stages[: self.stage_index(layer) + 1]:
            x = stage(x)
        return x

    def forward_from(self, x: Tensor, layer: int) -> Tensor:
        """Run the stages after ``layer`` on its output."""
        for stage in self.stages[self.stage_index(layer) + 1:]:
            x = stage(x)
        return x


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(in_channels: int, channels: Sequence[int] = (16, 32, 64, 64)) -> Backbone:
    """Four conv3x3-BN-ReLU stages at strides 2, 4, 8, 8: a 16x16 explained map at 128 px.

    Small enough to train an ensemble of ten on a laptop CPU; the last stage keeps the resolution
    of the third so that Grad-CAM stays fine-grained.
    """
    c = list(channels)
    stages = [
        _conv_bn_relu(in_channels, c[0], stride=2),
        nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(c[0], c[1])),
        nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(c[1], c[2])),
        _conv_bn_relu(c[2], c[3]),
    ]
    return Backbone(stages, c)


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Rebuild the stem conv for ``in_channels``; grey input sums the RGB filters (pretrained)."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():
        w = conv.weight.sum(dim=1, keepdim=True) if in_channels == 1 else conv.weight.mean(
            dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _load_cached_weights(name: str):  # type: ignore[no-untyped-def]
    """torchvision's default weights, only if already in the torch hub cache (no downloads)."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists():
        raise UserError(f"backbone '{name}': pretrained weights are not cached at {cached}; "
                        "put the file there (mimic-runner never downloads) or set "
                        "backbone.pretrained=false")
    return weights


def torchvision_backbone(name: str, in_channels: int, pretrained: bool = False) -> Backbone:
    """A torchvision classifier cut into stages; its classifier head is dropped."""
    import torchvision.models as tvm

    weights = _load_cached_weights(name) if pretrained else None
    net = tvm.get_model(name, weights=weights)
    if name.startswith("resnet"):
        net.conv1 = _adapt_first_conv(net.conv1, in_channels)
        stages = [nn.Sequential(net.conv1, net.bn1, net.relu),
                  nn.Sequential(net.maxpool, net.layer1), net.layer2, net.layer3, net.layer4]
    elif name.startswith("densenet"):
        f = net.features
        f.conv0 = _adapt_first_conv(f.conv0, in_channels)
        stages = [nn.Sequential(f.conv0, f.norm0, f.relu0),
                  nn.Sequential(f.pool0, f.denseblock1),
                  nn.Sequential(f.transition1, f.denseblock2),
                  nn.Sequential(f.transition2, f.denseblock3),
                  # torchvision applies ReLU after norm5 in forward(); keep it in the stage so the
                  # explained map is the one the classifier pools.
                  nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU(inplace=False))]
    elif name.startswith("efficientnet"):
        f = net.features
        f[0][0] = _adapt_first_conv(f[0][0], in_channels)
        # Cut where the resolution halves: /2, /4, /8, /16, /32.
        stages = [nn.Sequential(f[0], f[1]), f[2], f[3], nn.Sequential(f[4], f[5]),
                  nn.Sequential(f[6], f[7], f[8])]
    else:
        raise UserError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    return Backbone(stages, _probe_channels(stages, in_channels))


@torch.no_grad()
def _probe_channels(stages: Sequence[nn.Module], in_channels: int) -> list[int]:
    """Stage widths from one tiny forward pass (eval mode: BatchNorm statistics stay untouched)."""
    seq = nn.Sequential(*stages)
    was_training = seq.training
    seq.eval()
    x = torch.zeros(1, in_channels, 64, 64)
    channels = []
    for stage in stages:
        x = stage(x)
        channels.append(int(x.shape[1]))
    seq.train(was_training)
    return channels


def build_backbone(name: str, in_channels: int, pretrained: bool = False,
                   **kwargs: object) -> Backbone:
    """Build a backbone by name (the ``backbone/`` config group)."""
    if in_channels not in (1, 3):
        raise UserError(f"backbone '{name}': in_channels must be 1 or 3, got {in_channels}")
    if name == "small_cnn":
        if pretrained:
            raise UserError("backbone 'small_cnn' has no pretrained weights; set "
                            "backbone.pretrained=false")
        return small_cnn(in_channels, **kwargs)  # type: ignore[arg-type]
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    return torchvision_backbone(name, in_channels, pretrained)

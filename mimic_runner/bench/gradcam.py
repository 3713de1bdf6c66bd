"""Grad-CAM evaluation throughput: our pure ``grad_cam`` against pytorch-grad-cam's ``GradCAM``.

Both explain the same network (the baseline's ``ClassifierNet``, eval mode) on the same batch and
device, for the predicted class, with maps upsampled to the input size and min-max normalised.
Ours: a forward pass with grad enabled and one ``autograd.grad`` from the target logits to the
explained feature map (no parameter gradients). pytorch-grad-cam: hooks, ``loss.backward()``
through the whole network, CAM arithmetic and OpenCV resizing in NumPy on the host. Our maps
are copied to the host too (``.cpu()``), so both produce the same thing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mimic_runner.explain.gradcam import grad_cam
from mimic_runner.models.backbones import build_backbone
from mimic_runner.models.classifier import ClassifierNet


class _LogitsOnly(nn.Module):
    """pytorch-grad-cam wants ``model(x) -> logits``."""

    def __init__(self, net: ClassifierNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).logits


def build_classifier(backbone: str, in_channels: int = 3, num_classes: int = 3,
                     seed: int = 0) -> ClassifierNet:
    """The baseline's network with random weights, in eval mode."""
    torch.manual_seed(seed)
    factory = functools.partial(build_backbone, backbone)
    return ClassifierNet(factory, in_channels, num_classes).eval()


def ours(net: ClassifierNet, x: Tensor) -> Tensor:
    """(B, C, H, W) -> host (B, H, W) Grad-CAMs of the predicted classes."""
    with torch.enable_grad():
        out = net(x)
        maps = grad_cam(out.logits, out.features, size=tuple(x.shape[-2:]))
    return maps.cpu()


def reference_cam(net: ClassifierNet) -> Any:
    """pytorch-grad-cam's ``GradCAM`` on the layer our ``grad_cam`` explains (hooks set once)."""
    from pytorch_grad_cam import GradCAM

    return GradCAM(model=_LogitsOnly(net), target_layers=[net.backbone.stages[-1]])


def cases(net: ClassifierNet, x: Tensor) -> tuple[dict[str, Callable[[], object]], float]:
    """The two callables to time and the max abs difference of their maps (a sanity check)."""
    ref = reference_cam(net)
    a = ours(net, x)
    b = torch.from_numpy(ref(input_tensor=x, targets=None))
    diff = float((a - b).abs().max())
    return {"ours": lambda: ours(net, x),
            "pytorch-grad-cam": lambda: ref(input_tensor=x, targets=None)}, diff

"""The one return type of every network, so any model is explained the same way."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """A forward pass.

    ``logits`` (B, K): class scores (an ensemble returns the mean of its members' log-softmax).
    ``features`` (*, B, C, h, w): the feature map that Grad-CAM explains, in the autograd graph;
    ensembles stack their members' maps on a leading (N,) axis.
    ``member_logits`` (N, B, K) for ensembles (computed from ``features``), else None.
    ``extras``: model-specific outputs (e.g. the U-Net's gaze logits, an attention map).
    """

    logits: Tensor
    features: Tensor
    member_logits: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

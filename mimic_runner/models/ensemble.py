"""Ensembles of N classifiers behind one interface, whatever executes the members.

The output is the mean of the members' log-softmax (as in the authors' code). The members'
feature maps are stacked into one (N, B, C, h, w) tensor and the heads read from that stack, so a
single ``autograd.grad`` call yields every member's Grad-CAM — and a batched execution of the
members (vmap or grouped convolutions) can replace the loop without touching anything else.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mimic_runner.models.classifier import BackboneFactory
from mimic_runner.models.output import ModelOutput


class EnsembleNet(nn.Module):
    """N independently initialised sub-models of one backbone.

    ``forward(x)`` -> ModelOutput with ``logits`` (B, K) = mean_n log_softmax(member_logits[n]),
    ``features`` (N, B, C, h, w) and ``member_logits`` (N, B, K).
    """

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                 ensemble_size: int = 10, impl: str = "loop", explain_layer: int = -1) -> None:
        super().__init__()
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        self.ensemble_size = ensemble_size
        self.impl = impl
        self.backbones = nn.ModuleList([backbone(in_channels=in_channels)
                                        for _ in range(ensemble_size)])
        self.explain_layer = self.backbones[0].stage_index(explain_layer)
        c = self.backbones[0].out_channels
        self.heads = nn.ModuleList([nn.Linear(c, num_classes) for _ in range(ensemble_size)])

    def member_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C_in, H, W) -> the explained maps (N, B, C, h, w) and the last maps."""
        k = self.explain_layer
        features = torch.stack([b.forward_to(x, k) for b in self.backbones])
        if k == len(self.backbones[0].stages) - 1:
            return features, features
        # Later stages must read from the stacked tensor so that it stays upstream of the logits.
        last = torch.stack([b.forward_from(features[n], k) for n, b in enumerate(self.backbones)])
        return features, last

    def forward(self, x: Tensor) -> ModelOutput:
        features, last = self.member_features(x)
        pooled = last.mean(dim=(-2, -1))  # (N, B, C)
        weight = torch.stack([h.weight for h in self.heads])  # (N, K, C)
        bias = torch.stack([h.bias for h in self.heads])  # (N, K)
        member_logits = torch.einsum("nbc,nkc->nbk", pooled, weight) + bias[:, None, :]
        logits = member_logits.log_softmax(dim=-1).mean(dim=0)
        return ModelOutput(logits=logits, features=features, member_logits=member_logits)

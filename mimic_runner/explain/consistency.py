"""Explanation-consistency losses for ensembles (pure functions on stacked maps).

``maps`` are the members' Grad-CAMs of one batch, shape (N, B, H, W), computed with
``grad_cam(..., create_graph=True)`` so that the losses send gradients to every member.
All distances are per (map, map) pair, averaged over pixels where that applies:

* ``mse``: mean squared difference of the two maps;
* ``cosine``: 1 - cosine similarity of the flattened maps (scale-free);
* ``kl``: KL(a' ‖ b') of the maps normalised to sum 1 (eps-guarded), i.e. the gaze-agreement
  metric used as a loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DISTANCES = ("mse", "cosine", "kl")
CONSISTENCIES = ("mean", "pairwise", "adversarial", "none")
_EPS = 1e-8


def map_distance(a: Tensor, b: Tensor, distance: str = "mse") -> Tensor:
    """Distance between maps ``a`` and ``b`` of shape (..., H, W) -> (...)."""
    if distance == "mse":
        return (a - b).pow(2).mean(dim=(-2, -1))
    if distance == "cosine":
        return 1 - F.cosine_similarity(a.flatten(-2), b.flatten(-2), dim=-1, eps=_EPS)
    if distance == "kl":
        p = a.flatten(-2).clamp_min(0) + _EPS
        q = b.flatten(-2).clamp_min(0) + _EPS
        p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
        return (p * (p.log() - q.log())).sum(-1)
    raise ValueError(f"unknown distance '{distance}'; choose one of {', '.join(DISTANCES)}")


def consistency_to_mean(maps: Tensor, distance: str = "mse") -> Tensor:
    """Mean over members and images of d(member map, ensemble-mean map); 0-d tensor.

    For ``kl`` the direction is KL(mean ‖ member), the mean playing the role of the target.
    """
    mean = maps.mean(dim=0, keepdim=True).expand_as(maps)
    return map_distance(mean, maps, distance).mean()


def pairwise_disagreement(maps: Tensor, distance: str = "mse") -> Tensor:
    """Per image, the mean over member pairs i < j of d(map_i, map_j): (N, B, H, W) -> (B,).

    The ``test/cam_disagreement`` measure (on detached maps). Zero for N = 1; ``kl`` is made
    symmetric by averaging both directions.
    """
    n = maps.shape[0]
    if n < 2:
        return maps.new_zeros(maps.shape[1])
    i, j = torch.triu_indices(n, n, offset=1, device=maps.device)
    d = map_distance(maps[i], maps[j], distance)  # (P, B)
    if distance == "kl":
        d = 0.5 * (d + map_distance(maps[j], maps[i], distance))
    return d.mean(dim=0)


def pairwise_consistency(maps: Tensor, distance: str = "mse") -> Tensor:
    """Mean over member pairs and images of d(map_i, map_j); 0-d tensor."""
    return pairwise_disagreement(maps, distance).mean()


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return -grad


def grad_reverse(x: Tensor) -> Tensor:
    """Identity forward, negated gradient backward (Ganin & Lempitsky 2015)."""
    return _GradientReversal.apply(x)


class MapDiscriminator(nn.Module):
    """Guesses which of N members produced a Grad-CAM map: (M, H, W) -> (M, N) logits."""

    def __init__(self, num_members: int, hidden: int = 32, pool: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            nn.Linear(hidden * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_members),
        )

    def forward(self, maps: Tensor) -> Tensor:
        return self.net(maps.unsqueeze(1))


class MLPDiscriminator(nn.Module):
    """The authors' discriminator: an MLP (one hidden layer, 512 units) on the flattened map,
    here average-pooled to ``pool`` x ``pool`` first (their default input size is 1024 = 32²),
    so it does not depend on the image size: (M, H, W) -> (M, N) logits."""

    def __init__(self, num_members: int, hidden: int = 512, pool: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
                                 nn.Linear(pool * pool, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, num_members))

    def forward(self, maps: Tensor) -> Tensor:
        return self.net(maps.unsqueeze(1))


DISCRIMINATORS = {"conv": MapDiscriminator, "mlp": MLPDiscriminator}


def adversarial_consistency(maps: Tensor, discriminator: nn.Module) -> tuple[Tensor, Tensor]:
    """The authors' adversarial term, made to pass gradients to the members.

    The discriminator learns to tell which member made each map (cross-entropy L_D); through a
    gradient-reversal layer the same backward pass pushes the members to *raise* L_D, i.e. to
    make their maps indistinguishable. Adding ``λ·L_D`` to the loss therefore trains the
    discriminator to minimise L_D and the members on ``Σ CE − λ·L_D`` in one step. Returns
    ``(L_D, discriminator accuracy)``.
    """
    n, b = maps.shape[:2]
    flat = grad_reverse(maps).reshape(n * b, *maps.shape[2:])
    who = torch.arange(n, device=maps.device).repeat_interleave(b)
    logits = discriminator(flat)
    loss = F.cross_entropy(logits, who)
    acc = (logits.argmax(-1) == who).float().mean().detach()
    return loss, acc

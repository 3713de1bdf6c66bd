"""Gaze guidance: a training term that pulls a model's Grad-CAM towards human attention.

Explanation supervision with human attention, in the form of Wang et al. ("Follow My Eye",
IEEE TMI 2022: a consistency between the CAM and the radiologist's gaze map) and Gao et al.
(RES, 2022), rather than Ross et al.'s input-gradient penalty ("Right for the Right Reasons",
2017), which only pushes attributions *off* an annotated region. Here:

    L = CE + weight · d(pool(gaze), CAM_y)

``CAM_y`` is the differentiable Grad-CAM of the explained class (the true label) at the
explained layer's own grid (``grad_cam(..., size=None, create_graph=True)``: per-image
min-max, no upsampling), ``pool(gaze)`` the image's training gaze average-pooled to that grid.
Pure functions on tensors; the LightningModules decide when the term is on.

Distances (per image, then averaged over the images that have gaze mass, and summed over
ensemble members):

* ``kl``: KL(gaze' ‖ cam') of both maps normalised to sum 1 (eps 1e-8), the saliency KLD that
  the evaluation reports, used as a loss;
* ``mse``: mean squared difference to the pooled gaze min-max scaled to [0, 1] like the CAM;
* ``cosine``: 1 - cosine similarity of the flattened maps (scale-free).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mimic_runner.explain.consistency import map_distance

__all__ = ["GUIDANCE_DISTANCES", "GUIDANCE_TARGETS", "gaze_guidance", "guidance_target",
           "pool_to_grid"]

GUIDANCE_DISTANCES = ("kl", "mse", "cosine")
#: Which class's Grad-CAM is guided: the true label (the class a clinician's gaze explains).
GUIDANCE_TARGETS = ("label",)
_EPS = 1e-7


def pool_to_grid(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, H, W) maps -> (B, h, w): the mean over each cell of ``grid``
    (``adaptive_avg_pool2d``; cells of unequal size when H is no multiple of h)."""
    if maps.dim() != 3:
        raise ValueError(f"expected maps (B, H, W), got {tuple(maps.shape)}")
    return F.adaptive_avg_pool2d(maps.float()[:, None], tuple(grid))[:, 0]


def guidance_target(gaze: Tensor, grid: tuple[int, int], distance: str = "kl") -> Tensor:
    """(B, H, W) training gaze -> (B, h, w), the map a guided Grad-CAM should match.

    Pooled to ``grid``; for ``mse`` also per-image min-max scaled to [0, 1] (the Grad-CAM's
    range), since that distance is not scale-free."""
    pooled = pool_to_grid(gaze.clamp_min(0), grid)
    if distance != "mse":
        return pooled
    lo = pooled.amin(dim=(-2, -1), keepdim=True)
    hi = pooled.amax(dim=(-2, -1), keepdim=True)
    return (pooled - lo) / (hi - lo + _EPS)


def gaze_guidance(cams: Tensor, gaze: Tensor, distance: str = "kl") -> Tensor:
    """The guidance term, a 0-d tensor: the mean over images of d(target, cam), summed over
    ensemble members (as an ensemble's cross-entropy is the sum of its members' own, so
    ``weight`` weighs each member's term against its cross-entropy as for a single model).

    Args:
        cams: differentiable Grad-CAMs at the explained grid, (B, h, w) for one model or
            (N, B, h, w) for N ensemble members (each member guided alike).
        gaze: (B, H, W) non-negative training gaze maps at image resolution.
        distance: ``kl`` (default), ``mse`` or ``cosine``.

    Images whose gaze has no mass carry no target and are left out; with none left the term is
    0 (still connected to ``cams``, so backward works). The term is exactly 0 when every CAM
    equals :func:`guidance_target` of its gaze (for ``kl`` and ``cosine``: any positive multiple).
    """
    if distance not in GUIDANCE_DISTANCES:
        raise ValueError(f"unknown distance '{distance}'; choose one of "
                         f"{', '.join(GUIDANCE_DISTANCES)}")
    if cams.dim() not in (3, 4):
        raise ValueError(f"expected CAMs (B, h, w) or (N, B, h, w), got {tuple(cams.shape)}")
    if gaze.dim() != 3 or gaze.shape[0] != cams.shape[-3]:
        raise ValueError(f"expected gaze (B, H, W) with B={cams.shape[-3]}, got "
                         f"{tuple(gaze.shape)}")
    target = guidance_target(gaze.to(cams.device), tuple(cams.shape[-2:]), distance)
    has_mass = gaze.flatten(1).sum(dim=1).to(cams.device) > 0
    if not bool(has_mass.any()):
        return cams.sum() * 0.0
    d = map_distance(target.expand_as(cams), cams, distance)  # (B,) or (N, B)
    return d[..., has_mass].mean(dim=-1).sum()


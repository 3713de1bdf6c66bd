"""Reference maps: what a score means next to a map that knows nothing, the average gaze, and
the image's own gaze at the explanation's resolution. Pure functions on tensors.

Every reference is scored on the same test images with the same metric code as the model's
explanations (``ref/<name>/<metric>`` in ``metrics.json``):

* ``uniform``: a constant map (KLD of the gaze against "no preference"; NSS 0, CC 0 and
  AUC-Judd 0.5 by the metric conventions);
* ``mean_gaze``: the pixel-wise mean of the *training* split's gaze maps, each normalised to
  sum 1 first — where radiologists look on average, with no image seen — at full resolution;
* ``mean_gaze_grid``: the same map limited to what a model can express: average-pooled to the
  explained layer's grid and post-processed exactly as a Grad-CAM (bilinear upsampling,
  per-image min-max). The fair bar for a Grad-CAM;
* ``own_gaze_grid``: the test image's *own* gaze map, pooled and post-processed the same way.
  A strong reference, **not** an upper bound: pooling the gaze is not the best a grid map can
  do for every metric (an 8x8 map built from the image's fixations scores a far higher NSS).
  It was called ``gaze_oracle`` before; old runs keep that key.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mimic_runner.explain.gradcam import postprocess_cam
from mimic_runner.explain.guidance import pool_to_grid

__all__ = ["cyclic_subset_means", "grid_like_cam", "mean_gaze_map", "own_gaze_grid",
           "uniform_maps"]


def uniform_maps(like: Tensor) -> Tensor:
    """Constant maps of ``like``'s shape (B, H, W), value 1."""
    return torch.ones_like(like, dtype=torch.float32)


def mean_gaze_map(gaze: Tensor) -> Tensor:
    """(N, H, W) gaze maps -> (H, W): the mean of the maps with any mass, each summing to 1.

    Raises:
        ValueError: no map has any gaze, or a map has a negative value.
    """
    if gaze.dim() != 3:
        raise ValueError(f"expected gaze maps (N, H, W), got {tuple(gaze.shape)}")
    g = gaze.double()
    if bool((g < 0).any()):
        raise ValueError("gaze maps must be non-negative")
    total = g.sum(dim=(-2, -1))
    keep = total > 0
    if not bool(keep.any()):
        raise ValueError("no gaze map has any mass")
    return (g[keep] / total[keep, None, None]).mean(dim=0).float()


def grid_like_cam(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, H, W) -> (B, H, W): pooled to ``grid`` (h, w), then Grad-CAM's own post-processing
    (bilinear upsampling back to (H, W), per-image min-max with 1e-7): the map as a Grad-CAM
    of that layer could show it at best."""
    return postprocess_cam(pool_to_grid(maps, grid), size=tuple(maps.shape[-2:]))


def own_gaze_grid(gaze: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, H, W) gaze -> (B, H, W): each image's own gaze as :func:`grid_like_cam` shows it."""
    return grid_like_cam(gaze, grid)


def cyclic_subset_means(members: Tensor, k: int) -> Tensor:
    """(N, B, H, W) members' maps -> (N, B, H, W): entry i is the mean map of members
    i, i+1, ..., i+k-1 (mod N), 1 <= k <= N. Every member is in exactly k of the N subsets, so a
    score averaged over them does not favour the first members (k = 1: each member alone)."""
    if members.dim() != 4:
        raise ValueError(f"expected members' maps (N, B, H, W), got {tuple(members.shape)}")
    n = members.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"subset size k={k} must be in [1, {n}]")
    idx = (torch.arange(n, device=members.device)[:, None]
           + torch.arange(k, device=members.device)[None, :]) % n  # (N, k)
    return members[idx].mean(dim=1)

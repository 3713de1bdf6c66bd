"""Reference maps: what a score means next to a map that knows nothing, the average gaze, and
the best map at the explanation's resolution. Pure functions on tensors.

Every reference is scored on the same test images with the same metric code as the model's
explanations (``ref/<name>/<metric>`` in ``metrics.json``):

* ``uniform``: a constant map (KLD of the gaze against "no preference"; NSS 0, CC 0 and
  AUC-Judd 0.5 by the metric conventions);
* ``mean_gaze``: the pixel-wise mean of the *training* split's gaze maps, each normalised to
  sum 1 first — where radiologists look on average, with no image seen;
* ``gaze_oracle``: the image's own gaze, average-pooled to the explained layer's grid and then
  post-processed exactly as a Grad-CAM (bilinear upsampling, per-image min-max): the best any
  map at that resolution can do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mimic_runner.explain.gradcam import postprocess_cam

__all__ = ["cumulative_member_means", "gaze_oracle", "mean_gaze_map", "uniform_maps"]


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


def gaze_oracle(gaze: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, H, W) gaze -> (B, H, W): average-pooled to ``grid`` (h, w), then Grad-CAM's own
    post-processing (bilinear upsampling to (H, W), per-image min-max with 1e-7)."""
    if gaze.dim() != 3:
        raise ValueError(f"expected gaze maps (B, H, W), got {tuple(gaze.shape)}")
    pooled = F.adaptive_avg_pool2d(gaze.float()[:, None], tuple(grid))[:, 0]
    return postprocess_cam(pooled, size=tuple(gaze.shape[-2:]))


def cumulative_member_means(members: Tensor) -> Tensor:
    """(N, B, H, W) members' maps -> (N, B, H, W): entry k-1 is the mean of the first k."""
    if members.dim() != 4:
        raise ValueError(f"expected members' maps (N, B, H, W), got {tuple(members.shape)}")
    k = torch.arange(1, members.shape[0] + 1, device=members.device, dtype=members.dtype)
    return members.cumsum(dim=0) / k.view(-1, 1, 1, 1)

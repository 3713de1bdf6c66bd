"""Progressive erasing and restoration of ranked pixels: the grid, the rankings, the masks.

The tensor maths under PEPPR (:mod:`mimic_runner.explain.peppr`, which scores the curves):

* images are float (B, C, H, W) in [0, 1], the model's *input space*; erased pixels (all
  channels) become a ``fill`` in the same units;
* a ranking is ``ranks`` (R, P) int, P = H·W, ``ranks[r, p]`` the position of pixel ``p``
  (raster order) in ranking ``r``, 0 = most important;
* step ``i`` of ``S`` touches ``counts[i]`` pixels (:func:`step_counts`: round(i·P/(S−1)),
  symmetric so that ``counts[i] + counts[S−1−i] == P``); erasing step i replaces the pixels
  with ``rank < counts[i]``, restoration step i shows only those and fills the rest;
* ties in a ranking map are broken by a seeded random permutation, never by raster order
  (which would erase the top rows of a flat region first).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MODES",
    "curve_auc",
    "gaussian_blur",
    "inverse_ranks",
    "is_symmetric",
    "perturb",
    "random_patch_ranks",
    "random_ranks",
    "rank_pixels",
    "step_counts",
]

MODES = ("erase", "restore")


def step_counts(n_pixels: int, steps: int) -> Tensor:
    """Pixels touched at each of ``steps`` evenly spaced fractions of ``n_pixels`` (0 to all).

    Returns (S,) int64 with ``counts[0] == 0``, ``counts[-1] == n_pixels`` and
    ``counts[i] + counts[S-1-i] == n_pixels`` (so erasing by a ranking is restoration by its
    reverse, read backwards — see :func:`mirror_result`), except at the middle step when both
    ``steps`` and ``n_pixels`` are odd (half a pixel cannot be erased; see
    :func:`is_symmetric`). Fractions are ``counts / n_pixels``.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    if n_pixels < 1:
        raise ValueError(f"n_pixels must be positive, got {n_pixels}")
    i = torch.arange(steps, dtype=torch.long)
    d = steps - 1
    counts = (2 * i * n_pixels + d) // (2 * d)  # round half up, in integers
    half = steps // 2
    counts[steps - half:] = n_pixels - counts[:half].flip(0)
    return counts


def is_symmetric(counts: Tensor) -> bool:
    """Whether ``counts[i] + counts[S-1-i] == counts[-1]`` for every step (mirroring is exact)."""
    return bool((counts + counts.flip(0) == counts[-1]).all())


def rank_pixels(scores: Tensor, descending: bool = True,
                generator: torch.Generator | None = None) -> Tensor:
    """Pixel ranks of one or more importance maps.

    Args:
        scores: (H, W) or (R, H, W) finite importance maps.
        descending: rank 0 = highest score (True) or lowest.
        generator: seeds the random order among tied pixels (default: seed 0).

    Returns:
        (R, H·W) int32: ``ranks[r, p]`` = position of pixel ``p`` (raster order) when the pixels
        of map ``r`` are sorted by importance. Computed with one sort per map; reuse it for
        every step.
    """
    if scores.dim() == 2:
        scores = scores.unsqueeze(0)
    if scores.dim() != 3:
        raise ValueError(f"scores must be (H, W) or (R, H, W), got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores hold NaN or Inf; a ranking needs finite importance values")
    flat = scores.reshape(len(scores), -1).float()
    r, p = flat.shape
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    # Shuffle, stable-sort, un-shuffle: tied pixels end up in random, not raster, order.
    perm = torch.randperm(p, generator=generator).to(flat.device)
    order = perm[torch.sort(flat[:, perm], dim=1, descending=descending, stable=True).indices]
    ranks = torch.empty(r, p, dtype=torch.int32, device=flat.device)
    positions = torch.arange(p, dtype=torch.int32, device=flat.device).expand(r, p)
    return ranks.scatter_(1, order, positions)


def random_ranks(n_pixels: int, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """``n`` random rankings of ``n_pixels`` pixels: (n, P) int32."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return torch.stack([torch.randperm(n_pixels, generator=g) for _ in range(n)]).to(torch.int32)


def random_patch_ranks(height: int, width: int, patch: int = 1, n: int = 1,
                       generator: torch.Generator | None = None) -> Tensor:
    """``n`` random orders of square ``patch``-pixel blocks: (n, H·W) int32.

    Each block's pixels are consecutive in the order (in random order among themselves), so
    erasing removes whole blocks — as spatially coherent as a ranking by a smooth map, unlike
    a pixel-wise random order (``patch=1``), whose scattered erased pixels break the image far
    faster than any region does.
    """
    if patch < 1:
        raise ValueError(f"patch must be at least 1, got {patch}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if patch == 1:
        return random_ranks(height * width, n, g)
    gh, gw = -(-height // patch), -(-width // patch)
    coarse = torch.rand(n, gh, gw, generator=g)
    scores = coarse.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :height, :width]
    return rank_pixels(scores, generator=g)


def inverse_ranks(ranks: Tensor) -> Tensor:
    """The exact reverse order (least important first): ``P - 1 - ranks``."""
    return ranks.shape[-1] - 1 - ranks


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) float images, edges replicated.

    The kernel is truncated at ``3·sigma``; ``sigma <= 0`` returns the images unchanged.
    """
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    b, c, h, w = images.shape
    x = images.reshape(b * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(b, c, h, w)


def perturb(images: Tensor, fill: Tensor, ranks: Tensor, counts: Tensor, mode: str) -> Tensor:
    """Erased or restored versions of a batch at several steps.

    Args:
        images: (B, C, H, W) float in [0, 1] (un-normalised input space).
        fill: broadcastable to (B, C, H, W), same units: what erased pixels become.
        ranks: (B, P) the ranking used for each image (P = H·W).
        counts: (S,) pixels touched per step.
        mode: ``erase`` (the ``counts[s]`` top-ranked pixels become ``fill``) or ``restore``
            (only those show the image, the rest is ``fill``).

    Returns:
        (S, B, C, H, W) float.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    b, _, h, w = images.shape
    if ranks.shape != (b, h * w):
        raise ValueError(f"ranks must be (B, H·W) = ({b}, {h * w}), got {tuple(ranks.shape)}")
    top = ranks.unsqueeze(0) < counts.to(ranks.device).view(-1, 1, 1)  # (S, B, P)
    replaced = top if mode == "erase" else ~top
    return torch.where(replaced.view(-1, b, 1, h, w), fill.unsqueeze(0), images.unsqueeze(0))


def curve_auc(fractions: Tensor, values: Tensor) -> Tensor:
    """Normalised area under curves: trapezoid over ``fractions`` divided by their range.

    ``fractions`` (S,) increasing (here from 0 to 1, so the division is by 1); ``values``
    (..., S). The result is the curve's mean height, in the units of ``values``.
    """
    span = (fractions[-1] - fractions[0]).to(values.dtype)
    return torch.trapezoid(values, fractions.to(values.dtype), dim=-1) / span

"""Regions of interest: validation, rasterisation and the feedback target — pure functions.

Coordinates are image-normalised: a point ``(x, y)`` has ``x`` = column / width to the right and
``y`` = row / height downwards, so ``(0, 0)`` is the image's top-left corner and ``(1, 1)`` its
bottom-right corner whatever the resolution. Pixel ``(r, c)`` of an ``H x W`` map belongs to a
region when its centre ``((c + 0.5) / W, (r + 0.5) / H)`` does.

Shapes: ``rect`` and ``ellipse`` are given by two opposite corners of their (axis-aligned)
bounding box; ``polygon`` by its vertices in order (even-odd rule). Kinds: ``include`` ("look
here") and ``exclude`` ("not here").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

SHAPES = ("rect", "ellipse", "polygon")
KINDS = ("include", "exclude")
TARGET_MODES = ("edit", "include", "exclude", "replace")
MAX_POLYGON_POINTS = 64
MIN_EXTENT = 1e-3  # a rect/ellipse thinner than this (in image widths) is a mis-click


@dataclass(frozen=True)
class ROI:
    """One region drawn on one image (see the module docstring for the conventions)."""

    shape: str
    kind: str
    points: tuple[tuple[float, float], ...]
    weight: float = 1.0
    meta: dict[str, object] = field(default_factory=dict, compare=False, hash=False)


def validate_roi(shape: str, kind: str, points: Sequence[Sequence[float]],
                 weight: float = 1.0) -> None:
    """Raise ``ValueError`` with one clear sentence when a region is not well-formed."""
    if shape not in SHAPES:
        raise ValueError(f"shape '{shape}' is not one of {', '.join(SHAPES)}")
    if kind not in KINDS:
        raise ValueError(f"kind '{kind}' is not one of {', '.join(KINDS)}")
    for i, p in enumerate(points):
        if len(p) != 2:
            raise ValueError(f"points[{i}] has {len(p)} values; a point is [x, y]")
        for name, v in zip("xy", p):
            if not math.isfinite(v) or not 0.0 <= v <= 1.0:
                raise ValueError(f"points[{i}]: {name}={v} is outside the image; coordinates "
                                 "are image-normalised in [0, 1]")
    if shape in ("rect", "ellipse"):
        if len(points) != 2:
            raise ValueError(f"a {shape} takes 2 points (opposite corners of its box), "
                             f"got {len(points)}")
        (x0, y0), (x1, y1) = points
        if abs(x1 - x0) < MIN_EXTENT or abs(y1 - y0) < MIN_EXTENT:
            raise ValueError(f"the {shape} has no area; drag out a larger box")
    else:
        if not 3 <= len(points) <= MAX_POLYGON_POINTS:
            raise ValueError(f"a polygon takes 3 to {MAX_POLYGON_POINTS} points, "
                             f"got {len(points)}")
        if polygon_area(points) < MIN_EXTENT**2:
            raise ValueError("the polygon has no area; its points are (nearly) on a line")
    if not math.isfinite(weight) or not 0.0 < weight <= 100.0:
        raise ValueError(f"weight={weight}: use a number in (0, 100]")


def polygon_area(points: Sequence[Sequence[float]]) -> float:
    """Absolute area of a simple polygon (shoelace formula), in normalised units."""
    s = 0.0
    for (x0, y0), (x1, y1) in zip(points, [*points[1:], points[0]]):
        s += x0 * y1 - x1 * y0
    return abs(s) / 2


def _pixel_centres(height: int, width: int, device: torch.device | None = None
                   ) -> tuple[Tensor, Tensor]:
    ys = (torch.arange(height, device=device, dtype=torch.float64) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float64) + 0.5) / width
    return torch.meshgrid(xs, ys, indexing="xy")  # each (H, W)


def rasterize_roi(roi: ROI, height: int, width: int) -> Tensor:
    """Binary mask (H, W) float32 of the pixels whose centres lie in the region."""
    px, py = _pixel_centres(height, width)
    pts = roi.points
    if roi.shape == "rect":
        (x0, y0), (x1, y1) = pts
        inside = ((px >= min(x0, x1)) & (px <= max(x0, x1))
                  & (py >= min(y0, y1)) & (py <= max(y0, y1)))
    elif roi.shape == "ellipse":
        (x0, y0), (x1, y1) = pts
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
        inside = ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 <= 1.0
    elif roi.shape == "polygon":
        inside = torch.zeros(height, width, dtype=torch.bool)
        for (xa, ya), (xb, yb) in zip(pts, [*pts[1:], pts[0]]):
            if ya == yb:
                continue  # a horizontal edge is never crossed by the horizontal ray
            crosses = (ya > py) != (yb > py)
            x_at = (xb - xa) * (py - ya) / (yb - ya) + xa
            inside ^= crosses & (px < x_at)
    else:
        raise ValueError(f"unknown shape '{roi.shape}'")
    return inside.to(torch.float32)


def roi_masks(rois: Sequence[ROI], height: int, width: int) -> tuple[Tensor, Tensor, float]:
    """Union masks of one image's regions: include (H, W), exclude (H, W), and its weight.

    The image's weight ``w_i`` is the largest weight among its regions (1 by default).
    """
    inc = torch.zeros(height, width)
    exc = torch.zeros(height, width)
    for roi in rois:
        m = rasterize_roi(roi, height, width)
        if roi.kind == "include":
            inc = torch.maximum(inc, m)
        else:
            exc = torch.maximum(exc, m)
    weight = max((r.weight for r in rois), default=1.0)
    return inc, exc, weight


def edited_target(attention: Tensor, include: Tensor, exclude: Tensor,
                  mode: str = "edit") -> Tensor:
    """The corrected attention map M' of the expert's feedback.

    Args:
        attention: (B, H, W) the model's map M in [0, 1] (the accepted model's, held fixed).
        include, exclude: (B, H, W) union masks R of the "look here" / "not here" regions.
        mode: ``edit`` max(M, R_inc) ⊙ (1 − R_exc) (both kinds of region); ``include``
            max(M, R_inc); ``exclude`` M ⊙ (1 − R_exc); ``replace`` R_inc ⊙ (1 − R_exc) (the
            drawn regions alone are the target: 1 where to look, 0 everywhere else).

    Returns:
        (B, H, W) target in [0, 1].
    """
    if mode == "edit":
        return torch.maximum(attention, include) * (1 - exclude)
    if mode == "include":
        return torch.maximum(attention, include)
    if mode == "exclude":
        return attention * (1 - exclude)
    if mode == "replace":
        return include * (1 - exclude)
    raise ValueError(f"mode '{mode}' is not one of {', '.join(TARGET_MODES)}")


def feedback_loss(attention: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Weighted squared distance between the model's and the corrected maps.

    ``(1/n) Σ_i w_i · mean_pixels (M'_i − M_i)²`` over the n images of the batch: the per-pixel
    mean keeps the scale of γ independent of the map's resolution, the 1/n of the number of
    feedback images in a batch.

    Args:
        attention: (n, H, W) current maps M (in the graph).
        target: (n, H, W) corrected maps M' (no gradient needed).
        weights: (n,) non-negative image weights w_i.

    Returns:
        0-d tensor.
    """
    per_image = (target - attention).pow(2).flatten(1).mean(-1)
    return (weights.to(per_image) * per_image).sum() / max(len(per_image), 1)


def mass_share(maps: Tensor, mask: Tensor) -> Tensor:
    """Fraction of each map's mass inside a mask: ``Σ(M·R) / Σ M`` per image.

    :func:`~mimic_runner.metrics.saliency.confounder_share`, except that an empty mask gives NaN
    (an image without a region of that kind is left out of the mean, not counted as 0).

    Args:
        maps: (B, H, W) non-negative maps.
        mask: (B, H, W) masks (non-zero = inside).

    Returns:
        (B,) in [0, 1]; NaN for an empty mask or an all-zero map (nothing to share out).
    """
    from mimic_runner.metrics.saliency import confounder_share

    share = confounder_share(maps.clamp_min(0), mask)
    empty = (mask != 0).flatten(1).sum(-1) == 0
    return torch.where(empty, torch.full_like(share, float("nan")), share)


def checked_roi(shape: str, kind: str, points: Sequence[Sequence[float]], weight: float,
                height: int, width: int) -> ROI:
    """A well-formed region that covers at least one pixel of an ``height x width`` image.

    The one check of a region, new or edited. Raises ``ValueError`` with one clear sentence.
    """
    try:
        pts = tuple((float(x), float(y)) for x, y in points)
        validate_roi(shape, kind, pts, float(weight))
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc) or "a region needs shape, kind and [x, y] points") from None
    roi = ROI(shape=shape, kind=kind, points=pts, weight=float(weight))
    if not bool(rasterize_roi(roi, height, width).any()):
        raise ValueError(f"the region covers no pixel of the {height}x{width} image; draw a "
                         "larger region")
    return roi

"""Global explanations for aligned images: pixel-wise aggregation of per-image maps.

Engelmann, Storkey & Bernabeu, "Global explainability in aligned image modalities" (2021): when
every pixel position shows the same relative place on the imaged object (chest radiographs,
retinal images), per-image explanations can be averaged pixel by pixel into one *overall*
global explanation and one per class (*label-wise*).

Conventions (see docs/global-explanations.md for the reasons):

* maps are (N, H, W), non-negative for ``sum`` normalisation, finite;
* ``normalize="sum"``: each map divided by its sum, so every image carries the same total
  importance and the global map is again a distribution over pixels (it sums to 1). A map
  that is zero everywhere carries no preference and becomes uniform ``1 / (H·W)``;
* ``normalize="minmax"``: each map scaled to [0, 1] by ``(x - min) / (max - min + 1e-7)``
  (Grad-CAM's own convention, :data:`~mimic_runner.explain.gradcam.CAM_EPS`); a constant map
  becomes zeros;
* ``normalize="none"``: maps averaged as given;
* the overall map is the mean over *all* images (classes weighted by their frequency), not the
  mean of the class maps;
* the standard deviation is the population one (``correction=0``): it describes the spread of
  the maps behind a global map, and is defined (0) for a single image;
* a group with no image gets a NaN map, NaN standard deviation and count 0, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mimic_runner.explain.gradcam import CAM_EPS

__all__ = [
    "GROUP_BY",
    "NORMALIZATIONS",
    "GlobalMaps",
    "global_explanations",
    "grouped_mean_std",
    "normalize_maps",
]

NORMALIZATIONS = ("sum", "minmax", "none")
GROUP_BY = ("label", "pred")


def normalize_maps(maps: Tensor, method: str = "sum") -> Tensor:
    """Normalise each map of ``maps`` (N, H, W) on its own; returns float (N, H, W).

    ``sum``: divide by the map's sum (maps must be non-negative; an all-zero map becomes
    uniform). ``minmax``: ``(x - min) / (max - min + 1e-7)`` (a constant map becomes zeros).
    ``none``: unchanged (as float).

    Raises:
        ValueError: unknown ``method``, wrong shape, non-finite values, or negative values
            with ``sum``.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {method!r}")
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {tuple(maps.shape)}")
    x = maps.float() if not maps.is_floating_point() or maps.dtype == torch.float16 else maps
    if not torch.isfinite(x).all():
        raise ValueError("maps hold NaN or Inf values")
    if method == "none":
        return x.clone()
    if method == "minmax":
        lo = x.amin(dim=(-2, -1), keepdim=True)
        hi = x.amax(dim=(-2, -1), keepdim=True)
        return (x - lo) / (hi - lo + CAM_EPS)
    if (x < 0).any():
        raise ValueError("normalize='sum' needs non-negative maps; use 'minmax' for signed maps")
    total = x.sum(dim=(-2, -1), keepdim=True)
    uniform = torch.full_like(x, 1.0 / (x.shape[-2] * x.shape[-1]))
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), uniform)


def grouped_mean_std(maps: Tensor, groups: Tensor, num_groups: int
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel-wise mean and population standard deviation of ``maps`` per group.

    Args:
        maps: (N, H, W) float.
        groups: (N,) integer group of each map, in ``0..num_groups-1``.
        num_groups: G.

    Returns:
        ``mean`` (G, H, W), ``std`` (G, H, W) (NaN for empty groups), ``counts`` (G,) int64.

    Two passes (mean, then squared deviations) rather than E[x²] − E[x]², which cancels
    catastrophically in float32 for maps normalised to sum 1 (values ~1e-4).
    """
    if maps.dim() != 3 or groups.shape != maps.shape[:1]:
        raise ValueError(f"expected maps (N, H, W) and groups (N,), got {tuple(maps.shape)} and "
                         f"{tuple(groups.shape)}")
    groups = groups.long().to(maps.device)
    if len(groups) and (groups.min() < 0 or groups.max() >= num_groups):
        raise ValueError(f"groups must lie in 0..{num_groups - 1}")
    g, (h, w) = num_groups, maps.shape[-2:]
    counts = torch.bincount(groups, minlength=g)
    sums = torch.zeros(g, h, w, dtype=maps.dtype, device=maps.device).index_add_(0, groups, maps)
    denom = counts.clamp_min(1).to(maps.dtype).view(g, 1, 1)
    mean = sums / denom
    dev = (maps - mean[groups]) ** 2
    var = torch.zeros_like(sums).index_add_(0, groups, dev) / denom
    empty = (counts == 0).view(g, 1, 1)
    nan = torch.tensor(float("nan"), dtype=maps.dtype, device=maps.device)
    return torch.where(empty, nan, mean), torch.where(empty, nan, var.sqrt()), counts


@dataclass
class GlobalMaps:
    """Global explanations of one set of images.

    ``overall`` / ``overall_std`` (H, W) over all N images; ``per_class`` / ``per_class_std``
    (K, H, W) and ``counts`` (K,) per group (true or predicted class, ``group_by``); empty
    groups hold NaN maps, count 0 and a line in ``notes``.
    """

    overall: Tensor
    overall_std: Tensor
    n_images: int
    per_class: Tensor
    per_class_std: Tensor
    counts: Tensor
    group_by: str
    normalize: str
    class_names: list[str]
    notes: list[str] = field(default_factory=list)

    def class_map_or_overall(self, k: int) -> Tensor:
        """The map of class ``k``, or the overall map where class ``k`` had no image."""
        return self.per_class[k] if int(self.counts[k]) > 0 else self.overall


def global_explanations(
    maps: Tensor,
    labels: Tensor,
    predictions: Tensor | None = None,
    num_classes: int | None = None,
    normalize: str = "sum",
    group_by: str = "label",
    class_names: list[str] | None = None,
) -> GlobalMaps:
    """Overall and per-class global explanations from per-image maps.

    Args:
        maps: (N, H, W) per-image explanations (N ≥ 1).
        labels: (N,) true classes. predictions: (N,) predicted classes (needed for
            ``group_by="pred"``).
        num_classes: K; default ``len(class_names)`` or ``max(labels, predictions) + 1``.
        normalize: per-image normalisation before averaging, see :func:`normalize_maps`.
        group_by: ``label`` (true class, label-wise explanations as in the paper) or ``pred``
            (what the model decided).
        class_names: names for notes and outputs; default ``class_0 ...``.

    Returns:
        A :class:`GlobalMaps` (float32 tensors on the device of ``maps``).
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    if maps.dim() != 3 or len(maps) == 0:
        raise ValueError(f"maps must be (N, H, W) with N ≥ 1, got shape {tuple(maps.shape)}")
    if labels.shape != maps.shape[:1]:
        raise ValueError(f"labels must be (N,) = ({len(maps)},), got {tuple(labels.shape)}")
    if group_by == "pred":
        if predictions is None:
            raise ValueError("group_by='pred' needs predictions")
        if predictions.shape != maps.shape[:1]:
            raise ValueError(f"predictions must be ({len(maps)},), got {tuple(predictions.shape)}")
    groups = labels if group_by == "label" else predictions
    assert groups is not None
    if num_classes is None:
        if class_names is not None:
            num_classes = len(class_names)
        else:
            seen = [labels] if predictions is None else [labels, predictions]
            num_classes = int(max(int(t.max()) for t in seen)) + 1
    names = list(class_names) if class_names is not None else [
        f"class_{k}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class_names for {num_classes} classes")

    x = normalize_maps(maps, normalize).float()
    overall, overall_std, _ = grouped_mean_std(x, torch.zeros(len(x), dtype=torch.long), 1)
    per_class, per_class_std, counts = grouped_mean_std(x, groups, num_classes)
    what = "true label" if group_by == "label" else "prediction"
    notes = [f"class '{names[k]}' has no image with that {what}: its map is NaN (count 0)"
             for k in range(num_classes) if int(counts[k]) == 0]
    return GlobalMaps(overall=overall[0], overall_std=overall_std[0], n_images=len(x),
                      per_class=per_class, per_class_std=per_class_std, counts=counts.cpu(),
                      group_by=group_by, normalize=normalize, class_names=names, notes=notes)

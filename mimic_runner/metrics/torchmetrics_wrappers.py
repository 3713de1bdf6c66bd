"""Dataset means of the saliency metrics as ``torchmetrics.Metric`` s (DDP-correct).

Every metric here is the mean over images of a per-image score from
:mod:`mimic_runner.metrics.saliency`. ``update(saliency, target)`` takes (B, H, W) (or (H, W))
maps of equal shape: ``saliency`` the explanation (e.g. Grad-CAM), ``target`` the human gaze
map, fixation map or confounder mask, depending on the metric. The states are a float64 sum
of scores and integer counts, all reduced with ``"sum"`` across processes, so the mean is
exact under DDP whatever the per-rank batch sizes.

Images whose *target* makes the score undefined (no fixation, all-zero or constant gaze, an
all-zero map for :class:`ConfounderShare`, ...) are **skipped and counted** in
``num_skipped``; they never turn the mean into NaN. Images whose *saliency* map is constant
(all-zero Grad-CAM included) are scored with the conventions of
:mod:`mimic_runner.metrics.saliency` and counted in ``num_degenerate``. A non-finite saliency
value is a bug upstream and is not hidden: it propagates into the mean.

``compute()`` returns a 0-d float64 tensor. If every image was skipped it returns NaN and
warns (an honest "not measured" in a results table rather than a crash at the end of a
run). After ``compute()``, ``last_counts`` holds the all-process counts
(``{"scored", "skipped", "degenerate"}``) for the caller to store next to the score.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from mimic_runner.metrics.saliency import (
    NSS_GAZE_VARIANTS,
    auc_judd,
    cc,
    confounder_share,
    gaze_on_zero,
    is_constant,
    kld,
    kld_floor,
    nss,
    nss_from_gaze,
    nss_variant_name,
    sim,
)

__all__ = [
    "ConfounderShare",
    "FindingShare",
    "GazeOnZero",
    "MassShare",
    "SaliencyAUCJudd",
    "SaliencyCC",
    "SaliencyKLD",
    "SaliencyKLDFloor",
    "SaliencyNSS",
    "SaliencySIM",
]


def _any_nonzero(t: Tensor) -> Tensor:
    return (t != 0).flatten(1).any(dim=1)


class _MeanSaliencyMetric(Metric):
    """Mean of a per-image score; subclasses define ``_score`` and ``_target_ok``."""

    is_differentiable: ClassVar[bool] = False
    full_state_update: ClassVar[bool] = False
    higher_is_better: ClassVar[bool | None] = None
    #: What a skipped image lacked, for the warning and the docs.
    skip_reason: str = "undefined target"

    score_sum: Tensor
    num_scored: Tensor
    num_skipped: Tensor
    num_degenerate: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("num_scored", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_skipped", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_degenerate", default=torch.tensor(0), dist_reduce_fx="sum")
        self.last_counts: dict[str, int] | None = None

    def _score(self, saliency: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def _target_ok(self, saliency: Tensor, target: Tensor) -> Tensor:
        """(B,) bool: the images whose score is defined (the others are skipped)."""
        raise NotImplementedError

    def update(self, saliency: Tensor, target: Tensor) -> None:
        """Add a batch: ``saliency`` and ``target`` (B, H, W) or (H, W), same shape."""
        if saliency.shape != target.shape or saliency.dim() not in (2, 3):
            raise ValueError(
                f"{type(self).__name__}.update expects saliency and target of the same shape "
                f"(B, H, W) or (H, W), got {tuple(saliency.shape)} and {tuple(target.shape)}"
            )
        if saliency.dim() == 2:
            saliency, target = saliency[None], target[None]
        saliency, target = saliency.detach(), target.detach()
        keep = self._target_ok(saliency, target)
        scores = self._score(saliency, target).to(torch.float64)
        self.score_sum += torch.where(keep, scores, torch.zeros_like(scores)).sum()
        self.num_scored += keep.sum()
        self.num_skipped += (~keep).sum()
        self.num_degenerate += (keep & is_constant(saliency)).sum()

    def compute(self) -> Tensor:
        """Mean score over the scored images (0-d float64); NaN with a warning if none."""
        self.last_counts = {
            "scored": int(self.num_scored),
            "skipped": int(self.num_skipped),
            "degenerate": int(self.num_degenerate),
        }
        if self.last_counts["scored"] == 0:
            warnings.warn(
                f"{type(self).__name__}: no image could be scored "
                f"({self.last_counts['skipped']} skipped: {self.skip_reason}); returning NaN",
                UserWarning,
                stacklevel=2,
            )
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.score_sum.device)
        return self.score_sum / self.num_scored

    def reset(self) -> None:
        super().reset()
        self.last_counts = None


class _GazeMassMetric(_MeanSaliencyMetric):
    """A lower-is-better score against a gaze map, undefined (skipped) for an all-zero one."""

    higher_is_better = False
    skip_reason = "all-zero gaze"

    def _target_ok(self, saliency: Tensor, target: Tensor) -> Tensor:
        return _any_nonzero(target)


class SaliencyKLD(_GazeMassMetric):
    """Mean KL(gaze ‖ saliency) (:func:`~mimic_runner.metrics.saliency.kld`); target: gaze.

    Skips images with an all-zero gaze map. Lower is better.
    """

    def _score(self, saliency: Tensor, target: Tensor) -> Tensor:
        return kld(saliency, target)


class SaliencyKLDFloor(SaliencyKLD):
    """Mean KLD with 1 % of a uniform map under the explanation
    (:func:`~mimic_runner.metrics.saliency.kld_floor`): the KLD without the zero-pixel
    artefact. A diagnostic; the MIT-exact :class:`SaliencyKLD` stays the primary number."""

    def _score(self, saliency: Tensor, target: Tensor) -> Tensor:
        return kld_floor(saliency, target)


class GazeOnZero(_GazeMassMetric):
    """Mean share of the gaze mass on pixels where the explanation is exactly 0
    (:func:`~mimic_runner.metrics.saliency.gaze_on_zero`); target: gaze. Lower is better."""

    def _score(self, saliency: Tensor, target: Tensor) -> Tensor:
        return gaze_on_zero(saliency, target)


class SaliencyNSS(_MeanSaliencyMetric):
    """Mean NSS; the target is a fixation map (``source="fixations"``, the MIT definition) or a
    gaze heatmap (``source="gaze"``, with an :func:`~mimic_runner.metrics.saliency.nss_from_gaze`
    ``variant``: ``"weighted"`` (default), ``"quantile"`` (with ``q``) or ``"positive"``).

    ``nss_variant`` names what was computed — ``"fixations"``, ``"gaze-weighted"``,
    ``"gaze-quantile@0.9"``, ``"gaze-positive"`` — store it next to the score, since the
    variants are not comparable with each other. Skips images without a fixation (or with an
    all-zero gaze map). Higher is better.
    """

    higher_is_better = True

    def __init__(
        self, source: str = "fixations", variant: str = "weighted", q: float = 0.9, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if source not in ("fixations", "gaze"):
            raise ValueError(f"source must be 'fixations' or 'gaze', got {source!r}")
        if variant not in NSS_GAZE_VARIANTS:
            raise ValueError(f"unknown NSS variant {variant!r}; choose one of {NSS_GAZE_VARIANTS}")
        if not 0.0 < q < 1.0:
            raise ValueError(f"q must be in (0, 1), got {q}")
        self.source, self.variant, self.q = source, variant, q
        self.nss_variant = (
            "fixations" if source == "fixations" else f"gaze-{nss_variant_name(variant, q)}"
        )
        self.skip_reason = "no fixation" if source == "fixations" else "all-zero gaze"

    def _score(self, saliency: Tensor, target: Tensor) -> Tensor:
        if self.source == "fixations":
            return nss(saliency, target)
        return nss_from_gaze(saliency, target, variant=self.variant, q=self.q)

    def _target_ok(self, saliency: Tensor, target: Tensor) -> Tensor:
        # Fixations: any non-zero entry; gaze (non-negative): every variant has at least the
        # maximum pixel as a fixation as soon as one value is positive.
        return _any_nonzero(target)


class SaliencyCC(_MeanSaliencyMetric):
    """Mean Pearson correlation with the gaze map (:func:`~mimic_runner.metrics.saliency.cc`).

    Skips images with a constant (e.g. all-zero) gaze map. Higher is better.
    """

    higher_is_better = True
    skip_reason = "constant gaze"

    def _score(self, saliency: Tensor, target: Tensor) -> Tensor:
        return cc(saliency, target)

    def _target_ok(self, saliency: Tensor, target: Tensor) -> Tensor:
        return ~is_constant(target)


class SaliencySIM(_MeanSaliencyMetric):
    """Mean similarity with the gaze map (:func:`~mimic_runner.metrics.saliency.sim`).

    Skips images with a constant (e.g. all-zero) gaze map. Higher is better.
    """

    higher_is_better = True
    skip_reason = "constant gaze"

    def _score(self, saliency: Tensor, target: Tensor) -> Tensor:
        return sim(saliency, target)

    def _target_ok(self, saliency: Tensor, target: Tensor) -> Tensor:
        return ~is_constant(target)


class SaliencyAUCJudd(_MeanSaliencyMetric):
    """Mean AUC-Judd against a fixation map (:func:`~mimic_runner.metrics.saliency.auc_judd`).

    Skips images with no fixated pixel or with every pixel fixated. Higher is better.
    """

    higher_is_better = True
    skip_reason = "no fixation, or every pixel fixated"

    def _score(self, saliency: Tensor, target: Tensor) -> Tensor:
        return auc_judd(saliency, target)

    def _target_ok(self, saliency: Tensor, target: Tensor) -> Tensor:
        n_fix = (target > 0).flatten(1).sum(dim=1)
        return (n_fix > 0) & (n_fix < target[0].numel())


class MassShare(_MeanSaliencyMetric):
    """Mean fraction of the explanation's mass on a mask (a confounder, a finding's region).

    Per image ``Σ(map·mask) / Σ map``
    (:func:`~mimic_runner.metrics.saliency.confounder_share`). Skips images whose map is
    all-zero (no mass to share out) and, with ``skip_empty_masks=True`` (default), images
    with an empty mask, whose share is trivially 0 and would dilute the mean.
    """

    def __init__(self, skip_empty_masks: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skip_empty_masks = skip_empty_masks
        self.skip_reason = "all-zero map" + (" or empty mask" if skip_empty_masks else "")

    def _score(self, saliency: Tensor, target: Tensor) -> Tensor:
        return confounder_share(saliency, target)

    def _target_ok(self, saliency: Tensor, target: Tensor) -> Tensor:
        ok = _any_nonzero(saliency)
        return ok & _any_nonzero(target) if self.skip_empty_masks else ok


class ConfounderShare(MassShare):
    """:class:`MassShare` on the confounder mask (lower is better)."""

    higher_is_better = False


class FindingShare(MassShare):
    """:class:`MassShare` on the finding's true region (higher is better)."""

    higher_is_better = True

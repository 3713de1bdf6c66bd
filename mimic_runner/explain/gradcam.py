"""Grad-CAM as a pure function of a forward pass (no hooks).

Conventions (Selvaraju et al. 2017, as implemented by pytorch-grad-cam's ``GradCAM``):

* ``weights[c]`` = spatial mean of d logit[target] / d features[c];
* ``cam`` = ReLU(Σ_c weights[c] · features[c]);
* with ``normalize=True``: per-image min-max ``(x - min) / (max - min + 1e-7)``, bilinear
  resize (``align_corners=False``, no antialias, i.e. OpenCV's ``INTER_LINEAR``), clamp at 0,
  and min-max again. This is exactly pytorch-grad-cam's ``scale_cam_image`` followed by its
  single-layer ``aggregate_multi_layers``; the second min-max matters because bilinear
  upsampling of an 8x8 map need not reach the original 0 and 1.
* with ``normalize=False``: the ReLU map, only resized (useful for losses that want the raw
  scale).

The function needs the autograd graph from ``features`` to ``logits``: call it with grad
enabled (not under ``torch.no_grad()`` / ``torch.inference_mode()``), with ``features`` being
the very tensor the logits were computed from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CAM_EPS", "grad_cam", "postprocess_cam"]

#: Denominator guard of the per-image min-max scaling (pytorch-grad-cam's ``scale_cam_image``).
CAM_EPS = 1e-7

Size = int | Sequence[int]


def _as_hw(size: Size | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    if isinstance(size, int):
        return (size, size)
    hw = tuple(int(s) for s in size)
    if len(hw) != 2:
        raise ValueError(f"size must be an int or (H, W), got {tuple(size)}")
    return hw  # type: ignore[return-value]


def _minmax(cam: Tensor) -> Tensor:
    """Per-map (last two dims) ``(x - min) / (max - min + 1e-7)``; an all-zero map stays zero."""
    lo = cam.amin(dim=(-2, -1), keepdim=True)
    hi = cam.amax(dim=(-2, -1), keepdim=True)
    return (cam - lo) / (hi - lo + CAM_EPS)


def _resize(cam: Tensor, hw: tuple[int, int]) -> Tensor:
    if tuple(cam.shape[-2:]) == hw:
        return cam  # bilinear at scale 1 with align_corners=False is the identity
    lead = cam.shape[:-2]
    flat = cam.reshape(-1, 1, *cam.shape[-2:])
    out = F.interpolate(flat, size=hw, mode="bilinear", align_corners=False, antialias=False)
    return out.reshape(*lead, *hw)


def postprocess_cam(cam: Tensor, size: Size | None = None, normalize: bool = True) -> Tensor:
    """Resize (and min-max normalise) raw, non-negative CAMs of shape (*, h, w) to (*, H, W).

    The normalised path reproduces pytorch-grad-cam: min-max, bilinear resize, clamp at 0,
    min-max (each min-max with ``1e-7`` in the denominator, so all-zero maps stay zero).
    """
    hw = _as_hw(size, (cam.shape[-2], cam.shape[-1]))
    if not normalize:
        return _resize(cam, hw)
    cam = _resize(_minmax(cam), hw)
    return _minmax(cam.clamp_min(0))


def _check_shapes(logits: Tensor, features: Tensor) -> None:
    if features.dim() < 3:
        raise ValueError(f"features must be (*, C, h, w), got shape {tuple(features.shape)}")
    if logits.dim() != features.dim() - 2 or logits.shape[:-1] != features.shape[:-3]:
        raise ValueError(
            "logits (*, K) and features (*, C, h, w) must share their leading dims, got "
            f"logits {tuple(logits.shape)} and features {tuple(features.shape)}"
        )


def _check_targets(targets: Tensor | None, logits: Tensor) -> Tensor:
    if targets is None:
        return logits.detach().argmax(dim=-1)
    targets = torch.as_tensor(targets, device=logits.device)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:-1])} (the leading dims of logits), "
            f"got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class indices, got dtype {targets.dtype}")
    return targets.long()


def grad_cam(
    logits: Tensor,
    features: Tensor,
    targets: Tensor | None = None,
    size: Size | None = None,
    create_graph: bool = False,
    normalize: bool = True,
    detach_weights: bool = False,
) -> Tensor:
    """Grad-CAM maps of ``targets`` computed from a forward pass.

    Args:
        logits: (*, K) class scores computed from ``features`` (pre-softmax, as in
            pytorch-grad-cam's ``ClassifierOutputTarget``).
        features: (*, C, h, w) the feature map to explain, the tensor the logits were computed
            from (it must be in the autograd graph; ``requires_grad`` must be True). Leading dims
            may be more than a batch: an ensemble's stacked (N, B, C, h, w) with its members'
            (N, B, K) logits is explained in one backward pass, valid because each
            member's/sample's logits depend only on its own slice of ``features``. Stack the
            members' maps first and compute each member's logits from its slice of the stacked
            tensor, or the stacked tensor is not in the graph.
        targets: (*,) integer class per map; default: ``argmax`` of ``logits``. For the
            ensemble map of the README (mean of the members' maps for the ensemble's class):
            ``grad_cam(member_logits, features, targets=pred.expand(N, -1)).mean(0)``.
        size: output size, int or (H, W); default: the feature size (h, w).
        create_graph: if True the returned map is differentiable w.r.t. everything the
            features and logits depend on (model weights, inputs), for explanation losses.
            If False the map is detached (no graph is left behind) and no ``.grad`` is touched.
        normalize: per-image min-max scaling to [0, 1] as pytorch-grad-cam (see module doc);
            if False the ReLU map is only resized.
        detach_weights: with ``create_graph``, treat the channel weights (the spatial means of
            the gradients) as constants: the map stays differentiable through ``features`` but
            not through the gradients themselves (no second-order path into the classifier
            head, and no double backward). The values are the same either way.

    Returns:
        (*, H, W) maps in the dtype of ``features``. A map whose ReLU is zero everywhere is
        returned as zeros (never NaN).

    The forward graph is retained (``retain_graph=True``) so that the caller can still
    back-propagate its own loss through the same forward pass afterwards.

    Raises:
        RuntimeError: ``features`` does not require grad (e.g. computed under ``no_grad``).
        ValueError: mismatched shapes, or ``logits`` not computed from ``features``.
    """
    _check_shapes(logits, features)
    if not features.requires_grad:
        raise RuntimeError(
            "grad_cam needs the autograd graph from features to logits, but features does not "
            "require grad: run the forward pass with grad enabled (not under torch.no_grad() "
            "or torch.inference_mode()); for frozen weights, call features.requires_grad_() "
            "before computing the logits from it"
        )
    targets = _check_targets(targets, logits)
    score = logits.gather(-1, targets.unsqueeze(-1)).sum()
    # One grad call for all maps: d(sum of target logits)/d features[i] = d logit_i/d features[i]
    # because sample i's logit does not depend on other samples' features (no batch coupling:
    # BatchNorm must be in eval mode or placed before ``features``).
    (grads,) = torch.autograd.grad(
        score, features, retain_graph=True, create_graph=create_graph and not detach_weights,
        allow_unused=True
    )
    if grads is None:
        raise ValueError(
            "logits do not depend on features: pass the feature tensor the logits were computed "
            "from (for an ensemble, compute the members' logits from slices of the stacked maps)"
        )
    with torch.set_grad_enabled(create_graph):
        acts = features if create_graph else features.detach()
        weights = grads.mean(dim=(-2, -1), keepdim=True)
        cam = torch.relu((weights * acts).sum(dim=-3))
        return postprocess_cam(cam, size=size, normalize=normalize)


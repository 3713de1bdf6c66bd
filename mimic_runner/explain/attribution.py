"""Input attributions as pure functions: GradientSHAP, differentiable when training needs it.

The authors' explanation ensemble (mattswatson/learning-to-mimic, ``explanation_ensemble.py``)
trains on per-image min-max normalised ``|GradientSHAP|`` attributions of each sub-model
(captum's ``GradientShap``). This is the same estimator, written so that ``create_graph=True``
keeps the attributions in the autograd graph of the model's parameters — captum computes them
outside any graph, which is why the published term sends no gradient to the sub-models.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from mimic_runner.explain.double_backward import fast_double_backward

__all__ = ["attribution_maps", "gradient_shap"]


def gradient_shap(logit_fn: Callable[[Tensor], Tensor], inputs: Tensor, targets: Tensor,
                  baselines: Tensor | float = 0.0, n_samples: int = 5, stdev: float = 0.0,
                  generator: torch.Generator | None = None, create_graph: bool = False,
                  fast_second_order: bool = True) -> Tensor:
    """GradientSHAP (Lundberg & Lee 2017; as ``captum.attr.GradientShap``).

    The mean over ``n_samples`` draws of ``(x̃ − b) · ∇ f_t(b + α (x̃ − b))`` with
    ``α ~ U(0, 1)`` per image and draw, ``x̃ = x + N(0, stdev²)`` and ``f_t`` the logit of the
    image's target class.

    Args:
        logit_fn: (M, C, H, W) inputs -> (M, K) logits (one model, or one ensemble member).
        inputs: (B, C, H, W) images as the model sees them (normalised).
        targets: (B,) class per image.
        baselines: a scalar or a tensor broadcastable to (B, C, H, W) (the authors: a constant,
            their dataset's mean).
        n_samples: draws per image, evaluated in one batch of ``n_samples·B``.
        create_graph: keep the result differentiable w.r.t. the model's parameters.
        fast_second_order: with ``create_graph``, run the model's convolutions and train-mode
            batch norms with hand-written second derivatives
            (:func:`mimic_runner.explain.double_backward.fast_double_backward`): the same
            values and gradients up to float rounding, a training step on them 1.3x faster
            (BENCHMARKS.md). False: PyTorch's own double backward.

    Returns:
        (B, C, H, W) attributions.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    b = inputs.shape[0]
    x = inputs.detach().repeat(n_samples, *([1] * (inputs.dim() - 1)))
    if stdev > 0:
        x = x + stdev * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    base = torch.as_tensor(baselines, dtype=x.dtype, device=x.device)
    if base.dim() == inputs.dim() and base.shape[0] == b and b > 1:
        base = base.repeat(n_samples, *([1] * (inputs.dim() - 1)))
    alpha = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator,
                       device=x.device, dtype=x.dtype)
    point = (base + alpha * (x - base)).detach().requires_grad_(True)
    with fast_double_backward() if create_graph and fast_second_order else nullcontext():
        logits = logit_fn(point)
    score = logits.gather(1, targets.repeat(n_samples)[:, None]).sum()
    (grads,) = torch.autograd.grad(score, point, create_graph=create_graph)
    # The training loss needs no gradient w.r.t. these images: the fast path then skips the
    # first convolution's input gradient in the loss's backward.
    point.requires_grad_(False)
    attr = grads * (x - base)
    return attr.reshape(n_samples, b, *inputs.shape[1:]).mean(dim=0)


def attribution_maps(attributions: Tensor) -> Tensor:
    """(..., C, H, W) attributions -> (..., H, W) maps: ``|a|`` summed over channels, then
    per-image min-max to [0, 1] (a constant map becomes 0), as the authors normalise them."""
    m = attributions.abs().sum(dim=-3)
    lo = m.amin(dim=(-2, -1), keepdim=True)
    span = m.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (m - lo) / span.clamp_min(torch.finfo(m.dtype).tiny),
                       torch.zeros_like(m))

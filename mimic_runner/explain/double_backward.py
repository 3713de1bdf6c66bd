"""Cheaper double backward for training on input gradients (the authors' GradientSHAP term).

A loss on input attributions (``model=expl_ensemble_authors``) differentiates a gradient: its
backward runs through the *backward* graph of every convolution and batch norm. PyTorch's
generic formulas for that second derivative are slow on the CPU:

* train-mode batch norm (``NativeBatchNormBackwardBackward0``): about 40 full-size element-wise
  passes, most of them for terms that the fused batch-norm kernel computes in one;
* convolution (``ConvolutionBackwardBackward0``): the weight gradient of the input gradient
  as a convolution with batch and channels swapped, which oneDNN runs slowly for small
  channel counts, instead of the dedicated weight-gradient kernel.

:func:`fast_double_backward` is a context in which ``F.batch_norm`` (train mode) and
``F.conv2d`` are the same functions with hand-written second derivatives built from the fused
kernels (``native_batch_norm_backward``, ``convolution_backward``). Values and first and second
derivatives are the same mathematics (``tests/test_attribution.py`` compares them with
PyTorch's in float64 to 1e-10); only the float rounding order differs. Anything else (autocast,
string padding, unbatched input) runs PyTorch's own code. BENCHMARKS.md has the profile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["batch_norm_train", "conv2d", "fast_double_backward"]


def _channel_shape(x: Tensor) -> list[int]:
    """(N, C, *) -> the shape (1, C, 1, ...) a per-channel vector broadcasts with."""
    return [1, -1] + [1] * (x.dim() - 2)


def _channel_dot(u: Tensor, v: Tensor) -> Tensor:
    """Per-channel sum of ``u * v`` over every other dimension: (N, C, *) twice -> (C,)."""
    n, c = u.shape[:2]
    if u.is_contiguous() and v.is_contiguous():  # batched dot products: no full-size temporary
        return torch.matmul(u.reshape(n, c, 1, -1), v.reshape(n, c, -1, 1)).sum(0).reshape(c)
    return (u * v).sum([0, *range(2, u.dim())])


def _will_run(ctx: Any, i: int) -> bool:
    """Whether the running backward pass needs the gradient of the ``i``-th input.

    A leaf that no longer requires grad (GradientSHAP's interpolated images once their
    gradient is taken) needs none. Otherwise PyTorch's private ``_will_engine_execute_node``
    decides; when it is missing or cannot tell (a leaf while ``autograd.grad`` runs), the
    gradient is computed."""
    node = ctx.next_functions[i][0]
    if node is None:
        return False
    leaf = getattr(node, "variable", None)
    if leaf is not None and not leaf.requires_grad:
        return False
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    if will_run is None:
        return True
    try:
        return bool(will_run(node))
    except RuntimeError:
        return True


class _BatchNormGrad(torch.autograd.Function):
    """(gO, x, γ; batch mean, inverse std) -> train-mode batch norm's (gI, gγ, gβ), with its
    own backward: the second derivative with the batch statistics' dependence on x."""

    @staticmethod
    def forward(ctx: Any, g_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor,
                invstd: Tensor, eps: float) -> tuple[Tensor, Tensor | None, Tensor | None]:
        ctx.set_materialize_grads(False)
        gamma = weight if weight is not None else torch.ones_like(mean)
        g_in, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(
            g_out, x, gamma, None, None, mean, invstd, True, eps, [True, True, True])
        ctx.sums = (sum_gx, sum_g)  # Σ gO·x̂ and Σ gO per channel (= gγ, gβ)
        ctx.eps = eps
        ctx.save_for_backward(g_out, x, weight, mean, invstd)
        if weight is None:
            return g_in, None, None
        return g_in, sum_gx.clone(), sum_g.clone()

    @staticmethod
    def backward(ctx: Any, gg_in: Tensor | None, gg_w: Tensor | None, gg_b: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        # Per channel, x̂ = (x − μ)·r, M elements, a = mean(gO), b = mean(gO·x̂),
        # c = mean(h), d = mean(h·x̂), e = mean(h·gO) with h = gg_in; gI = γr(gO − a − x̂b):
        #   ∂/∂gO = γr(h − c − x̂d)                (the first backward applied to h)
        #   ∂/∂x  = −γr²[x̂(e − ca − 3db) + b(h − c) + d(gO − a)]
        #   ∂/∂γ  = M·r(e − ca − db)
        g_out, x, weight, mean, invstd = ctx.saved_tensors
        shape = _channel_shape(x)
        m = x.numel() // x.shape[1]
        r = invstd
        gamma = weight if weight is not None else torch.ones_like(r)
        sum_gx, sum_g = ctx.sums
        a, b = sum_g / m, sum_gx / m
        d_gout = d_x = d_w = None
        if gg_in is not None:
            d_gout, sum_hx, sum_h = torch.ops.aten.native_batch_norm_backward(
                gg_in, x, gamma, None, None, mean, invstd, True, ctx.eps, [True, True, True])
            c, d = sum_h / m, sum_hx / m
            e = _channel_dot(gg_in, g_out) / m
            k = -gamma * r * r
            coef_x = k * (e - c * a - 3 * d * b) * r  # x̂·s = x·(r·s) − μ·r·s
            const = -coef_x * mean - k * (b * c + d * a)
            d_x = torch.addcmul(const.reshape(shape), coef_x.reshape(shape), x)
            d_x.addcmul_((k * b).reshape(shape), gg_in).addcmul_((k * d).reshape(shape), g_out)
            if weight is not None:
                d_w = m * r * (e - c * a - d * b)
        if gg_w is not None or gg_b is not None:  # gγ = Σ gO·x̂ and gβ = Σ gO were used
            xhat = (x - mean.reshape(shape)) * r.reshape(shape)
            extra = torch.zeros_like(g_out)
            if gg_w is not None:
                extra = extra + xhat * gg_w.reshape(shape)
                t = (g_out - a.reshape(shape) - xhat * b.reshape(shape)) * (gg_w * r).reshape(shape)
                d_x = t if d_x is None else d_x + t
            if gg_b is not None:
                extra = extra + gg_b.reshape(shape)
            d_gout = extra if d_gout is None else d_gout + extra
        return d_gout, d_x, d_w, None, None, None


class _BatchNormTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor | None, running_var: Tensor | None, momentum: float,
                eps: float) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var,
                                                    True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx: Any, g_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        g_in, g_w, g_b = _BatchNormGrad.apply(g_out, x, weight, mean, invstd, ctx.eps)
        return g_in, g_w, g_b, None, None, None, None


def batch_norm_train(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                     running_mean: Tensor | None = None, running_var: Tensor | None = None,
                     momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``F.batch_norm(..., training=True)`` on (N, C, *) with the cheaper double backward
    (running statistics, when given, are updated in place as PyTorch does)."""
    return _BatchNormTrain.apply(x, weight, bias, running_mean, running_var, momentum, eps)


class _ConvGrad(torch.autograd.Function):
    """(gO, x, W) -> a convolution's (gI, gW, gb), with its own backward from the dedicated
    kernels: ∂⟨h, gI⟩/∂gO = conv(h, W) and ∂⟨h, gI⟩/∂W = the weight gradient of (gO, h)."""

    @staticmethod
    def forward(ctx: Any, g_out: Tensor, x: Tensor, weight: Tensor, conf: tuple,
                need: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
        ctx.set_materialize_grads(False)
        stride, padding, dilation, groups = conf
        bias_sizes = [weight.shape[0]] if need[2] else None
        g_in, g_w, g_b = torch.ops.aten.convolution_backward(
            g_out, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups,
            list(need))
        ctx.conf = conf
        ctx.save_for_backward(g_out, x, weight)
        return g_in, g_w, g_b

    @staticmethod
    def backward(ctx: Any, gg_in: Tensor | None, gg_w: Tensor | None, gg_b: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        g_out, x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        args = (stride, padding, dilation, False, [0, 0], groups)
        d_gout = d_x = d_w = None
        if gg_in is not None:
            d_gout = torch.convolution(gg_in, weight, None, *args)
            if ctx.needs_input_grad[2]:
                d_w = torch.ops.aten.convolution_backward(
                    g_out, gg_in, weight, None, *args, [False, True, False])[1]
        if gg_w is not None:  # gW = weight gradient of (gO, x): bilinear in gO and x
            t = torch.convolution(x, gg_w, None, *args)
            d_gout = t if d_gout is None else d_gout + t
            if ctx.needs_input_grad[1]:
                d_x = torch.ops.aten.convolution_backward(
                    g_out, x, gg_w, None, *args, [True, False, False])[0]
        if gg_b is not None:
            t = gg_b.reshape(_channel_shape(g_out)).expand_as(g_out)
            d_gout = t if d_gout is None else d_gout + t
        return d_gout, d_x, d_w, None, None


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, conf: tuple) -> Tensor:
        ctx.conf = conf
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        stride, padding, dilation, groups = conf
        return torch.convolution(x, weight, bias, stride, padding, dilation, False, [0, 0],
                                 groups)

    @staticmethod
    def backward(ctx: Any, g_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        # Only what this backward pass uses: a gradient w.r.t. the input alone (the
        # attribution) skips the weight-gradient kernels.
        need = (ctx.needs_input_grad[0] and _will_run(ctx, 0),
                ctx.needs_input_grad[1] and _will_run(ctx, 1),
                ctx.has_bias and ctx.needs_input_grad[2] and _will_run(ctx, 2))
        g_in, g_w, g_b = _ConvGrad.apply(g_out, x, weight, ctx.conf, need)
        return g_in, g_w, g_b, None


def _pair(v: int | tuple[int, ...] | list[int]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
           stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
           dilation: int | tuple[int, int] = 1, groups: int = 1) -> Tensor:
    """``F.conv2d`` on (N, C, H, W) with numeric padding and the cheaper double backward."""
    conf = (_pair(stride), _pair(padding), _pair(dilation), groups)
    return _Conv2d.apply(x, weight, bias, conf)


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
            "eps")
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


class _FastDoubleBackward(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if torch.is_autocast_enabled():
            return func(*args, **kwargs)
        if func is F.batch_norm:
            a = {"running_mean": None, "running_var": None, "weight": None, "bias": None,
                 "training": False, "momentum": 0.1, "eps": 1e-5,
                 **dict(zip(_BN_ARGS, args)), **kwargs}
            if a["training"] and a["input"].dim() >= 2:
                return batch_norm_train(a["input"], a["weight"], a["bias"], a["running_mean"],
                                        a["running_var"], a["momentum"], a["eps"])
        elif func is F.conv2d:
            a = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1,
                 **dict(zip(_CONV_ARGS, args)), **kwargs}
            if a["input"].dim() == 4 and not isinstance(a["padding"], str):
                return conv2d(a["input"], a["weight"], a["bias"], a["stride"], a["padding"],
                              a["dilation"], a["groups"])
        return func(*args, **kwargs)


@contextmanager
def fast_double_backward() -> Iterator[None]:
    """Within this context, ``F.conv2d`` and train-mode ``F.batch_norm`` (hence
    ``nn.Conv2d`` and ``nn.BatchNorm*``) record the cheaper second derivatives of this module.
    Only the forward needs to run inside; the backward passes may run anywhere."""
    with _FastDoubleBackward():
        yield

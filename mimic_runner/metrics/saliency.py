"""Saliency-map agreement metrics (MIT saliency benchmark conventions) as pure tensor functions.

Each function reproduces the MATLAB reference of the MIT saliency benchmark (cvzoya/saliency,
``code_forMetrics``: ``KLdiv.m``, ``NSS.m``, ``CC.m``, ``similarity.m``, ``AUC_Judd.m`` with
``jitter = 0``) on well-posed inputs, in the input's floating dtype (float64 in → float64 out).

Shapes: every map is (H, W) or (B, H, W); the two maps of a call must have the same shape
(the MATLAB code resizes the saliency map to the target's size; here a mismatch raises a
``ValueError`` naming both shapes: resize explicitly before scoring). The result is a 0-d
tensor for (H, W) input, else (B,). Maps are scored independently per image.

Dtypes: computation happens in the promoted floating dtype of the two maps (float64 if
none is floating; for fixation maps and masks, the saliency map's dtype alone). Fixation
maps may be bool or numeric; ``nss`` treats non-zero entries as fixated (MATLAB
``logical``), ``auc_judd`` entries > 0 (MATLAB ``F > 0``).

Degenerate inputs (the MATLAB code returns NaN, garbage or a misleading number for these).
The rule: a degenerate *prediction* gets a defined score, because it is a real model output
that must be counted; an undefined *target* gives NaN, and the torchmetrics wrappers in
:mod:`mimic_runner.metrics.torchmetrics_wrappers` skip and count such images, so no NaN
reaches a mean or a results table. "Constant" means max == min (this includes all-zero).

============================  ====================================================
case                          score
============================  ====================================================
``kld``, all-zero saliency    as MATLAB: saliency stays all-zero, KLD = Σ g·log(eps + g/eps)
                              (large, finite: the worst possible prediction)
``kld``, all-zero gaze        NaN (MATLAB: 0, which would read as a perfect score)
``kld``, negative values      ``ValueError`` (KL is defined on non-negative maps)
``nss``, constant saliency    0.0 (the z-scored map is 0 everywhere; MATLAB: NaN)
``nss``, no fixation          NaN (as MATLAB: mean over no pixel)
``cc``, either map constant   0.0 (no linear relation; MATLAB: NaN)
``sim``, all-zero map         as MATLAB: the map stays all-zero, so SIM = 0
``sim``, constant map ≠ 0     treated as all-zero, SIM = 0 (min-max gives 0/0; MATLAB: NaN)
``auc_judd``, const saliency  0.5 (chance: the ROC of a score with no ranking is the
                              diagonal, and what MATLAB's default jitter gives on average)
``auc_judd``, no fixation     NaN (as MATLAB)
``auc_judd``, all fixated     NaN (no negatives, the false-positive rate is 0/0)
``nss_from_gaze``, zero gaze  NaN (no gaze to weight by / no fixation)
``confounder_share``, 0 map   NaN (no mass to share out); an empty mask gives 0.0
============================  ====================================================

``nss_from_gaze`` scores NSS against a continuous gaze heatmap when a dataset has no
fixation map; see its docstring for the variants (default ``"weighted"``).
``confounder_share`` is the fraction of a map's mass on a known confounder's pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "MATLAB_EPS",
    "NSS_GAZE_VARIANTS",
    "auc_judd",
    "cc",
    "confounder_share",
    "gaze_on_zero",
    "is_constant",
    "kld",
    "kld_floor",
    "nss",
    "nss_from_gaze",
    "nss_variant_name",
    "sim",
]

#: MATLAB's ``eps`` (2^-52), used by ``KLdiv.m``.
MATLAB_EPS = 2.220446049250313e-16

#: Variants of :func:`nss_from_gaze`.
NSS_GAZE_VARIANTS = ("weighted", "quantile", "positive")


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.float64


def _flatten_pair(
    a: Tensor, b: Tensor, names: tuple[str, str], dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor, bool]:
    """Check shapes, return both maps as (B, H·W) and whether the input was a single map."""
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)} (resize the saliency map to the target's size first)"
        )
    if a.dim() not in (2, 3):
        raise ValueError(
            f"{names[0]} and {names[1]} must be (H, W) or (B, H, W), got {tuple(a.shape)}"
        )
    single = a.dim() == 2
    n = 1 if single else a.shape[0]
    if dtype is not None:
        a, b = a.to(dtype), b.to(dtype)
    return a.reshape(n, -1), b.reshape(n, -1), single


def _out(score: Tensor, single: bool) -> Tensor:
    return score[0] if single else score


def is_constant(maps: Tensor) -> Tensor:
    """(H, W) → 0-d bool, (B, H, W) → (B,): whether each map has max == min (all-zero included)."""
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1])
    const = flat.amax(dim=-1) == flat.amin(dim=-1)
    return const[0] if maps.dim() == 2 else const


def _sum_to_one(maps: Tensor) -> Tensor:
    """Divide each row by its sum, leaving all-zero rows at zero (MATLAB ``if any(map(:))``)."""
    total = maps.sum(dim=-1, keepdim=True)
    nonzero = (maps != 0).any(dim=-1, keepdim=True)
    return torch.where(nonzero, maps / torch.where(nonzero, total, torch.ones_like(total)), maps)


def kld(saliency: Tensor, gaze: Tensor) -> Tensor:
    """KL(gaze ‖ saliency) as ``KLdiv.m``: ``Σ g·log(eps + g/(s + eps))``.

    Both maps are non-negative and each is divided by its sum (an all-zero map stays zero);
    ``eps`` = :data:`MATLAB_EPS`. Lower is better; 0 for identical distributions.

    Args:
        saliency: (H, W) or (B, H, W) predicted map (e.g. Grad-CAM), any non-negative scale.
        gaze: same shape, human attention heatmap, any non-negative scale.

    Returns:
        0-d or (B,) tensor. All-zero saliency: the (large, finite) MATLAB value; all-zero gaze:
        NaN (undefined target).

    Raises:
        ValueError: different shapes, or a negative value in either map.
    """
    s, g, single = _flatten_pair(saliency, gaze, ("saliency", "gaze"), _float_dtype(saliency, gaze))
    if bool((s < 0).any()) or bool((g < 0).any()):
        raise ValueError("kld needs non-negative maps (saliency and gaze are distributions)")
    s, g = _sum_to_one(s), _sum_to_one(g)
    score = (g * torch.log(MATLAB_EPS + g / (s + MATLAB_EPS))).sum(dim=-1)
    score = torch.where((g != 0).any(dim=-1), score, torch.full_like(score, float("nan")))
    return _out(score, single)


#: Share of a uniform map mixed into the explanation by :func:`kld_floor`.
KLD_FLOOR_MIX = 0.01


def kld_floor(saliency: Tensor, gaze: Tensor, mix: float = KLD_FLOOR_MIX) -> Tensor:
    """KLD with a floor under the explanation: ``kld((1 − mix)·s/Σs + mix/(H·W), gaze)``.

    A diagnostic beside the MIT-exact :func:`kld`, not a replacement: Grad-CAM is exactly 0 on
    every pixel its ReLU cuts, and each unit of gaze mass there costs ``log(g/eps)`` ≈ 25–36
    nats, so a few such pixels can dominate the MIT KLD. Mixing 1 % of a uniform map bounds
    that cost at ``log(g·H·W/mix)`` and leaves maps without zeros almost unchanged. An all-zero
    explanation becomes the uniform map. Shapes, conventions and NaN for an all-zero gaze as
    :func:`kld`.
    """
    if not 0.0 < mix <= 1.0:
        raise ValueError(f"mix must be in (0, 1], got {mix}")
    s, _, _ = _flatten_pair(saliency, gaze, ("saliency", "gaze"), _float_dtype(saliency, gaze))
    if bool((s < 0).any()):
        raise ValueError("kld_floor needs a non-negative saliency map")
    s = (1.0 - mix) * _sum_to_one(s)
    s = torch.where(s.sum(dim=-1, keepdim=True) > 0, s, torch.zeros_like(s)) + mix / s.shape[-1]
    s = s / s.sum(dim=-1, keepdim=True)  # exactly uniform when the explanation was all zero
    return kld(s.reshape(saliency.shape), gaze)


def gaze_on_zero(saliency: Tensor, gaze: Tensor) -> Tensor:
    """Fraction of the gaze mass on pixels where the explanation is exactly 0, per image.

    The part of the gaze that :func:`kld` charges ``log(g/eps)`` for: 0 when the explanation
    is positive wherever the gaze is, 1 when it is zero wherever the gaze is.

    Args:
        saliency: (H, W) or (B, H, W) explanation. gaze: same shape, non-negative.

    Returns:
        0-d or (B,) tensor in [0, 1]; NaN for an all-zero gaze map.
    """
    s, g, single = _flatten_pair(saliency, gaze, ("saliency", "gaze"), _float_dtype(saliency, gaze))
    if bool((g < 0).any()):
        raise ValueError("gaze_on_zero needs a non-negative gaze map")
    score = (g * (s == 0)).sum(dim=-1) / g.sum(dim=-1)  # 0/0 = NaN for an all-zero gaze
    return _out(score, single)


def _zscore(s: Tensor) -> tuple[Tensor, Tensor]:
    """Rows z-scored with the N−1 std (MATLAB ``std``); constant rows become 0. Also returns
    the constant mask."""
    const = s.amax(dim=-1) == s.amin(dim=-1)
    mean = s.mean(dim=-1, keepdim=True)
    std = s.std(dim=-1, correction=1, keepdim=True) if s.shape[-1] > 1 else torch.ones_like(mean)
    std = torch.where(const[:, None], torch.ones_like(std), std)
    z = (s - mean) / std
    return torch.where(const[:, None], torch.zeros_like(z), z), const


def nss(saliency: Tensor, fixations: Tensor) -> Tensor:
    """Normalized Scanpath Saliency as ``NSS.m``: mean of the z-scored saliency at fixations.

    The saliency map is z-scored with its mean and N−1 standard deviation, then averaged over
    the fixated pixels (non-zero entries of ``fixations``). Higher is better; 0 is chance.

    Args:
        saliency: (H, W) or (B, H, W) predicted map.
        fixations: same shape, bool (or non-zero = fixated).

    Returns:
        0-d or (B,) tensor. Constant saliency: 0.0; no fixated pixel: NaN.
    """
    dtype = _float_dtype(saliency)
    s, f, single = _flatten_pair(saliency, fixations, ("saliency", "fixations"))
    return _out(_nss_rows(s.to(dtype), f != 0), single)


def _nss_rows(s: Tensor, fix: Tensor) -> Tensor:
    """NSS of (B, N) maps at (B, N) bool fixations."""
    z, _ = _zscore(s)
    mask = fix.to(s.dtype)
    return (z * mask).sum(dim=-1) / mask.sum(dim=-1)  # 0/0 = NaN for an empty fixation map


def nss_variant_name(variant: str = "weighted", q: float = 0.9) -> str:
    """The string that names an NSS-from-gaze variant in results, e.g. ``"quantile@0.9"``."""
    if variant not in NSS_GAZE_VARIANTS:
        raise ValueError(f"unknown NSS gaze variant {variant!r}; choose one of {NSS_GAZE_VARIANTS}")
    return f"quantile@{q:g}" if variant == "quantile" else variant


def nss_from_gaze(
    saliency: Tensor, gaze: Tensor, variant: str = "weighted", q: float = 0.9
) -> Tensor:
    """NSS against a continuous gaze heatmap, for datasets without a fixation map.

    Variants:

    * ``"weighted"`` (default): ``Σ z·g / Σ g`` with ``z`` the z-scored saliency (as in
      :func:`nss`) and ``g`` the non-negative gaze map: the expected z-score under the gaze
      distribution. It needs no threshold, and equals :func:`nss` exactly when ``gaze`` is a
      binary fixation map.
    * ``"quantile"``: fixations := pixels with ``gaze >= quantile(gaze, q)`` and ``gaze > 0``
      (per image, linear-interpolated quantile), then :func:`nss`.
    * ``"positive"``: fixations := ``gaze > 0``, then :func:`nss` (only meaningful for sparse
      maps; a blurred heatmap is positive almost everywhere).

    Use :func:`nss_variant_name` to record which variant produced a number.

    Args:
        saliency: (H, W) or (B, H, W). gaze: same shape, non-negative, any scale.
        variant: one of :data:`NSS_GAZE_VARIANTS`. q: the quantile of ``"quantile"``, in (0, 1).

    Returns:
        0-d or (B,) tensor. Constant saliency: 0.0; all-zero gaze: NaN (undefined target).

    Raises:
        ValueError: unknown variant, bad ``q``, shape mismatch, or negative gaze.
    """
    nss_variant_name(variant, q)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    dtype = _float_dtype(saliency, gaze)
    s, g, single = _flatten_pair(saliency, gaze, ("saliency", "gaze"), dtype)
    if bool((g < 0).any()):
        raise ValueError("nss_from_gaze needs a non-negative gaze map")
    if variant == "weighted":
        z, _ = _zscore(s)
        score = (z * g).sum(dim=-1) / g.sum(dim=-1)  # 0/0 = NaN for all-zero gaze
        return _out(score, single)
    if variant == "quantile":
        thr = torch.quantile(g, q, dim=-1, keepdim=True)
        fix = (g >= thr) & (g > 0)
    else:
        fix = g > 0
    return _out(_nss_rows(s, fix), single)


def cc(a: Tensor, b: Tensor) -> Tensor:
    """Pearson's linear correlation coefficient of two maps, as ``CC.m`` (symmetric).

    Args:
        a, b: (H, W) or (B, H, W) maps of the same shape.

    Returns:
        0-d or (B,) tensor in [-1, 1]; 0.0 when either map is constant (MATLAB: NaN).
    """
    x, y, single = _flatten_pair(a, b, ("a", "b"), _float_dtype(a, b))
    const = (x.amax(-1) == x.amin(-1)) | (y.amax(-1) == y.amin(-1))
    x = x - x.mean(dim=-1, keepdim=True)
    y = y - y.mean(dim=-1, keepdim=True)
    denom = torch.sqrt((x * x).sum(dim=-1) * (y * y).sum(dim=-1))
    score = (x * y).sum(dim=-1) / torch.where(const, torch.ones_like(denom), denom)
    return _out(torch.where(const, torch.zeros_like(score), score), single)


def _minmax_sum_to_one(m: Tensor) -> Tensor:
    """``similarity.m``'s per-map scaling: min-max to [0, 1], then sum to 1; all-zero and
    constant maps become all-zero."""
    lo, hi = m.amin(dim=-1, keepdim=True), m.amax(dim=-1, keepdim=True)
    const = hi == lo
    m = (m - lo) / torch.where(const, torch.ones_like(hi), hi - lo)  # constant → 0
    return _sum_to_one(m)


def sim(a: Tensor, b: Tensor) -> Tensor:
    """Similarity (histogram intersection) as ``similarity.m``: ``Σ min(a', b')`` (symmetric).

    Each map is min-max scaled to [0, 1], then divided by its sum; an all-zero map stays zero
    (as MATLAB), and so does a constant one (MATLAB: NaN).

    Returns:
        0-d or (B,) tensor in [0, 1]; 0 when either map is constant.
    """
    x, y, single = _flatten_pair(a, b, ("a", "b"), _float_dtype(a, b))
    return _out(torch.minimum(_minmax_sum_to_one(x), _minmax_sum_to_one(y)).sum(dim=-1), single)


def auc_judd(saliency: Tensor, fixations: Tensor) -> Tensor:
    """AUC-Judd as ``AUC_Judd.m`` with ``jitter = 0``.

    The saliency map is min-max normalised; the thresholds are its values at the fixated
    pixels (``fixations > 0``), sorted descending; at the i-th threshold t,
    tp = i / N_fix and fp = (#{S >= t} − i) / (N_pixels − N_fix); the curve gets the end points
    (0, 0) and (1, 1) and is integrated with the trapezoid rule. Ties are kept as MATLAB keeps
    them (no jitter). Higher is better; 0.5 is chance.

    Args:
        saliency: (H, W) or (B, H, W). fixations: same shape, bool or numeric (> 0 = fixated).

    Returns:
        0-d or (B,) tensor. Constant saliency: 0.5; no fixation, or every pixel fixated: NaN.
    """
    dtype = _float_dtype(saliency)
    s, f, single = _flatten_pair(saliency, fixations, ("saliency", "fixations"))
    s, fix = s.to(dtype), f > 0
    n_pix = s.shape[-1]
    lo, hi = s.amin(dim=-1, keepdim=True), s.amax(dim=-1, keepdim=True)
    const = (hi == lo).squeeze(-1)
    s = (s - lo) / torch.where(hi == lo, torch.ones_like(hi), hi - lo)

    n_fix = fix.sum(dim=-1)  # (B,)
    # Fixated values sorted descending; non-fixated slots sink to the end as -inf.
    thresh = torch.where(fix, s, torch.full_like(s, -torch.inf))
    thresh = thresh.sort(dim=-1, descending=True).values
    s_sorted = s.sort(dim=-1).values
    above = n_pix - torch.searchsorted(s_sorted, thresh.contiguous(), side="left")  # #{S >= t}
    i = torch.arange(1, n_pix + 1, device=s.device, dtype=dtype).expand_as(s)
    n_fix_f = n_fix.to(dtype)[:, None]
    tp = i / n_fix_f
    fp = (above.to(dtype) - i) / (n_pix - n_fix_f)
    # Points past N_fix are put at (1, 1): zero-width trapezoids, so the sum equals MATLAB's.
    valid = i <= n_fix_f
    one = torch.ones_like(tp)
    zero = torch.zeros_like(tp[:, :1])
    tp = torch.cat([zero, torch.where(valid, tp, one), zero + 1], dim=-1)
    fp = torch.cat([zero, torch.where(valid, fp, one), zero + 1], dim=-1)
    score = ((fp[:, 1:] - fp[:, :-1]) * (tp[:, 1:] + tp[:, :-1]) / 2).sum(dim=-1)

    undefined = (n_fix == 0) | (n_fix == n_pix)
    score = torch.where(const, torch.full_like(score, 0.5), score)
    score = torch.where(undefined, torch.full_like(score, float("nan")), score)
    return _out(score, single)


def confounder_share(saliency: Tensor, mask: Tensor) -> Tensor:
    """Fraction of a map's mass on a mask's pixels: ``Σ(map·mask) / Σ map`` per image (the
    mask: a known confounder, or the finding's true region).

    Args:
        saliency: (H, W) or (B, H, W) non-negative map (e.g. Grad-CAM).
        mask: same shape, bool (or non-zero = confounder pixel).

    Returns:
        0-d or (B,) tensor in [0, 1]: 0.0 for an empty mask; NaN for an all-zero map (no mass
        to share out; the wrapper skips and counts these).

    Raises:
        ValueError: shape mismatch or a negative map value.
    """
    dtype = _float_dtype(saliency)
    s, m, single = _flatten_pair(saliency, mask, ("saliency", "mask"))
    s, m = s.to(dtype), (m != 0).to(dtype)
    if bool((s < 0).any()):
        raise ValueError("confounder_share needs a non-negative map")
    score = (s * m).sum(dim=-1) / s.sum(dim=-1)  # 0/0 = NaN for an all-zero map
    return _out(score, single)

"""Elementwise maths that gives the same bits on every CPU, for the synthetic generators.

numpy's ``exp``, ``sin``, ``cos``, ``arctan2`` and ``power`` pick an implementation by the SIMD
extensions the CPU has (AVX2, AVX-512/SVML, NEON, or the C library), and these differ in the
last bit; a generator that used them made slightly different data on a laptop and on a server
(rarely visible in a uint8 pixel, but enough to break "same seed, same data"). The functions
here use only ``+ - * /``, ``rint`` and ``ldexp`` on float64, each of which IEEE 754 defines
exactly, one numpy operation at a time (so no compiler can fuse a multiply-add on one machine
and not another). Accuracy is a few ulp of float64, far below the float32 the generators store.

``gaussian_filter`` replaces ``scipy.ndimage.gaussian_filter`` for the same reason (its C loop
may be compiled with fused multiply-adds on some architectures, and its kernel comes from
numpy's ``exp``): the same truncated, normalised kernel, applied as shifted slices added in a
fixed order.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["arctan2", "cos", "exp", "gaussian_filter", "log", "power", "sin", "std"]

_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10
_PIO2_HI = 1.57079632673412561417e00  # pi/2 split likewise (Cody-Waite)
_PIO2_LO = 6.07710050650619224932e-11


def _f64(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _like(result: np.ndarray, *inputs: np.ndarray | float) -> np.ndarray:
    """float32 when every array input is float32 (as numpy's ufunc would return), else float64."""
    arrays = [a for a in inputs if isinstance(a, np.ndarray)]
    if arrays and all(a.dtype == np.float32 for a in arrays):
        return result.astype(np.float32)
    return result


def _poly(r: np.ndarray, coefs: list[float]) -> np.ndarray:
    """Horner's rule, highest coefficient first, one exactly rounded operation at a time."""
    acc = np.full_like(r, coefs[0])
    for c in coefs[1:]:
        acc = acc * r
        acc = acc + c
    return acc


_EXP_COEFS = [1.0 / math.factorial(n) for n in range(14, -1, -1)]  # Taylor, |r| <= ln2/2


def exp(x: np.ndarray | float) -> np.ndarray:
    """``e**x``, any shape (float32 for float32 input, else float64); 0 below about -745."""
    xd = np.clip(_f64(x), -745.0, 709.0)
    k = np.rint(xd / _LN2_HI)
    r = (xd - k * _LN2_HI) - k * _LN2_LO
    return _like(np.ldexp(_poly(r, _EXP_COEFS), k.astype(np.int32)), x)


_LOG_COEFS = [2.0 / n if n % 2 else 0.0 for n in range(29, -1, -1)]  # 2 atanh(s)
_SQRT_HALF = 0.7071067811865476


def log(x: np.ndarray | float) -> np.ndarray:
    """The natural logarithm for x > 0 (-inf at 0, nan below), dtype as :func:`exp`."""
    xd = _f64(x)
    m, e = np.frexp(np.where(xd > 0, xd, 1.0))  # x = m 2^e, m in [0.5, 1)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)  # now in [sqrt(1/2), sqrt(2))
    e = (e - low).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    out = (e * _LN2_HI + _poly(s, _LOG_COEFS)) + e * _LN2_LO
    out = np.where(xd > 0, out, np.where(xd == 0, -np.inf, np.nan))
    return _like(out, x)


def power(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """``x ** y`` for x >= 0 (0 ** y = 0 for y > 0), as ``exp(y log x)``; dtype as :func:`exp`."""
    xd, yd = np.broadcast_arrays(_f64(x), _f64(y))
    out = exp(yd * log(np.where(xd > 0, xd, 1.0)))
    out = np.where(xd > 0, out, np.where(yd > 0, 0.0, 1.0))
    return _like(out, x, y)


_SIN_COEFS = [(-1.0) ** (n // 2) / math.factorial(n) if n % 2 else 0.0 for n in range(19, -1, -1)]
_COS_COEFS = [(-1.0) ** (n // 2) / math.factorial(n) if n % 2 == 0 else 0.0
              for n in range(20, -1, -1)]


def _quadrant(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x = q pi/2 + r`` with |r| <= pi/4 and q mod 4 (for |x| well below 2^20 pi/2)."""
    k = np.rint(x / _PIO2_HI)
    r = (x - k * _PIO2_HI) - k * _PIO2_LO
    return np.mod(k, 4).astype(np.int8), r


def sin(x: np.ndarray | float) -> np.ndarray:
    """``sin(x)`` (dtype as :func:`exp`; arguments up to about 1e5 in magnitude)."""
    q, r = _quadrant(_f64(x))
    s, c = _poly(r, _SIN_COEFS), _poly(r, _COS_COEFS)
    return _like(np.select([q == 0, q == 1, q == 2], [s, c, -s], -c), x)


def cos(x: np.ndarray | float) -> np.ndarray:
    """``cos(x)`` (dtype as :func:`exp`; arguments up to about 1e5 in magnitude)."""
    q, r = _quadrant(_f64(x))
    s, c = _poly(r, _SIN_COEFS), _poly(r, _COS_COEFS)
    return _like(np.select([q == 0, q == 1, q == 2], [c, -s, -c], s), x)


_TAN_PI_12 = 0.2679491924311227  # tan(pi/12)
_SQRT3 = 1.7320508075688772
_ATAN_COEFS = [(-1.0) ** ((n - 1) // 2) / n if n % 2 else 0.0 for n in range(41, -1, -1)]


def _atan_unit(t: np.ndarray) -> np.ndarray:
    """``atan(t)`` for 0 <= t <= 1: one step to |t| <= tan(pi/12), then the Taylor series."""
    big = t > _TAN_PI_12
    reduced = np.where(big, (t * _SQRT3 - 1.0) / (t + _SQRT3), t)
    return _poly(reduced, _ATAN_COEFS) + np.where(big, math.pi / 6, 0.0)


def arctan2(y: np.ndarray | float, x: np.ndarray | float) -> np.ndarray:
    """The angle of ``(x, y)`` in (-pi, pi], as ``np.arctan2`` (0 at the origin)."""
    y_in, x_in = y, x
    y, x = np.broadcast_arrays(_f64(y), _f64(x))
    ay, ax = np.abs(y), np.abs(x)
    swap = ay > ax
    num, den = np.where(swap, ax, ay), np.where(swap, ay, ax)
    t = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    a = _atan_unit(t)
    a = np.where(swap, math.pi / 2 - a, a)
    a = np.where(x < 0, math.pi - a, a)
    return _like(np.where(y < 0, -a, a), y_in, x_in)


def gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """The normalised float64 kernel of ``scipy.ndimage.gaussian_filter`` (radius
    ``int(truncate * sigma + 0.5)``), from Python's ``math.exp`` and an exactly rounded sum."""
    radius = int(truncate * float(sigma) + 0.5)
    taps = [math.exp(-0.5 * (t / sigma) ** 2) for t in range(-radius, radius + 1)]
    total = math.fsum(taps)
    return np.array([t / total for t in taps])


_PAD = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap",
        "constant": "constant"}


def gaussian_filter(x: np.ndarray, sigma: float | tuple[float, ...], mode: str = "reflect",
                    truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(x, sigma, mode=mode, truncate=truncate)`` to within
    float64 round-off, bit-identical on every CPU; float64 out. A sigma of 0 skips that axis;
    ``mode`` is one of scipy's names (``constant`` pads with 0)."""
    out = _f64(x)
    sigmas = (sigma,) * out.ndim if np.isscalar(sigma) else tuple(sigma)
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        kernel = gaussian_kernel(float(s), truncate)
        radius = len(kernel) // 2
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode=_PAD[mode])
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for j, wgt in enumerate(kernel):
            acc += padded.take(np.arange(j, j + n), axis=axis) * wgt
        out = acc
    return out


def std(x: np.ndarray) -> float:
    """The population standard deviation (ddof 0) from exactly rounded sums."""
    flat = _f64(x).ravel()
    mean = math.fsum(flat) / flat.size
    d = flat - mean
    return math.sqrt(math.fsum(d * d) / flat.size)

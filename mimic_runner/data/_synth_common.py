"""Helpers shared by the synthetic generators (:mod:`.synth_cxr`, :mod:`.synth_smear`).

Conventions: batches of maps are ``(B, H, W)`` arrays, pixel coordinates are integer
``(row, col)`` pairs, and every random draw comes from a ``np.random.Generator`` passed in, so
that a generator is a pure function of its seed and parameters.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mimic_runner.data import _portable_math as pm
from mimic_runner.errors import UserError

# Corner slots for the shortcut marker, in the order classes are assigned to them:
# top-left, top-right, bottom-right, bottom-left.
CORNERS = ("top-left", "top-right", "bottom-right", "bottom-left")


def _has_type(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):  # bool is an int subclass; never accept it as one
        return False
    if kind is int:
        return isinstance(value, (int, np.integer))
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating))
    return isinstance(value, kind)


def check_types(params: dict[str, Any], generate: Callable[..., Any]) -> None:
    """Raise a :class:`UserError` unless each parameter has the type of its default.

    ints are accepted where floats are expected; bools only where a bool is.
    """
    for name, par in inspect.signature(generate).parameters.items():
        kind = type(par.default)
        if not _has_type(params[name], kind):
            raise UserError(f"{name}={params[name]!r} should be of type {kind.__name__}")


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    """Raise a :class:`UserError` unless ``lo <= value <= hi``."""
    if not lo <= value <= hi:
        raise UserError(f"{name}={value} is out of range; use a value in [{lo}, {hi}]")


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffled int64 labels with class counts differing by at most one."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def stratified_split_nonempty(labels: np.ndarray, num_classes: int, val_frac: float,
                              test_frac: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 split codes (0 train, 1 val, 2 test), stratified by class, no split empty.

    Every class puts at least one image in val and in test (a fraction that rounds to 0 still
    gets one), so callers must check that each class has at least three images. Not the
    preparers' :func:`mimic_runner.data.prepare._common.stratified_split_keep_train`, which
    honours a zero fraction and instead keeps a training image per class.
    """
    split = np.zeros(len(labels), dtype=np.uint8)
    for k in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_val = max(1, round(val_frac * len(idx)))
        n_test = max(1, round(test_frac * len(idx)))
        split[idx[:n_val]] = 1
        split[idx[n_val:n_val + n_test]] = 2
    return split


def check_sizes(n: int, num_classes: int, val_frac: float, test_frac: float) -> None:
    """Validate the image count and split fractions shared by both generators."""
    check_range("val_frac", val_frac, 0.0, 0.5)
    check_range("test_frac", test_frac, 0.0, 0.5)
    if val_frac + test_frac >= 0.9:
        raise UserError(f"val_frac + test_frac = {val_frac + test_frac:g} leaves too little to "
                        "train on; keep the sum below 0.9")
    if n < 3 * num_classes:
        raise UserError(f"n={n} is too small: train, val and test each need one image of every "
                        f"class, so use n >= {3 * num_classes}")


def marker_slots(labels: np.ndarray, split: np.ndarray, strength: float, num_slots: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Slot index of the shortcut marker of each image.

    In the train split an image's marker is, with probability ``strength``, in the slot of its
    class (class k -> slot k) and otherwise in a uniformly random slot; in val and test it is
    always uniformly random, i.e. independent of the class. So ``strength=0`` means no shortcut
    and the marker predicts the train label with accuracy ``strength + (1 - strength) / K``.
    """
    slots = rng.integers(0, num_slots, size=len(labels))
    follow = (split == 0) & (rng.random(len(labels)) < strength)
    slots[follow] = labels[follow]
    return slots


def corner_origins(slots: np.ndarray, size: int, box: int, margin: np.ndarray) -> np.ndarray:
    """Top-left pixel ``(row, col)`` of a ``box`` x ``box`` stamp in corner ``CORNERS[slot]``.

    ``margin`` (per image, pixels) is the gap between the stamp and the image border.
    """
    near = margin
    far = size - box - margin
    rows = np.where(np.isin(slots, (0, 1)), near, far)
    cols = np.where(np.isin(slots, (0, 3)), near, far)
    return np.stack([rows, cols], axis=1).astype(np.int64)


def stamp(shape: tuple[int, int, int], template: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """Boolean ``(B, H, W)`` masks holding ``template`` (h, w) at each image's ``origins`` (B, 2).

    The stamp must lie fully inside the image.
    """
    out = np.zeros(shape, dtype=bool)
    h, w = template.shape
    b = np.arange(shape[0])[:, None, None]
    rows = origins[:, 0, None, None] + np.arange(h)[None, :, None]
    cols = origins[:, 1, None, None] + np.arange(w)[None, None, :]
    out[b, rows, cols] = template[None]
    return out


def letter_l(box: int) -> np.ndarray:
    """A ``box`` x ``box`` boolean glyph of the letter "L", like a burned-in laterality marker."""
    glyph = np.zeros((box, box), dtype=bool)
    stroke = max(2, round(box / 4))
    lo, hi = box // 8, box - box // 8  # a thin empty rim, like a printed letter's side bearing
    glyph[lo:hi, lo:lo + stroke] = True
    glyph[hi - stroke:hi, lo:hi] = True
    return glyph


# Slots of the weak spurious cues (``cues`` in :mod:`.synth_cxr`): places on the image border
# that hold no lungs, heart or finding under the pose jitter (checked on 3000 images at 64 and
# 128 px; at 48 px the left and right cues touch a lung edge in about 1 image in 300), away
# from the marker's corners.
# Each is (edge, position of the cue's centre along that edge as a fraction of the side).
CUE_SLOTS: dict[str, tuple[str, float]] = {
    "top": ("top", 0.5), "bottom": ("bottom", 0.5), "left": ("left", 0.62),
    "right": ("right", 0.62), "bottom-left": ("bottom", 0.25), "bottom-right": ("bottom", 0.75),
}


def cue_presence(labels: np.ndarray, split: np.ndarray, num_classes: int, cues: int,
                 strength: float, rng: np.random.Generator) -> np.ndarray:
    """Which of ``cues`` weak cues each image carries: bool ``(N, cues)``.

    Cue ``j`` belongs to class ``j % num_classes``. In train, with probability ``strength`` an
    image carries cue j exactly when it is of that class, otherwise by a fair coin; so
    P(cue | its class) = s + (1 - s)/2 and P(cue | other class) = (1 - s)/2. In val and test
    every image carries each cue with the train split's overall rate, independent of the class.
    """
    n = len(labels)
    owner = np.arange(cues) % num_classes
    follow = rng.random((n, cues)) < strength
    coin = rng.random((n, cues)) < 0.5
    in_train = np.where(follow, labels[:, None] == owner[None, :], coin)
    rate = strength / num_classes + (1 - strength) / 2
    in_eval = rng.random((n, cues)) < rate
    return np.where((split == 0)[:, None], in_train, in_eval)


def cue_origins(slot: str, size: int, box: int, margin: np.ndarray, shift: np.ndarray,
                ) -> np.ndarray:
    """Top-left pixel ``(row, col)`` (B, 2) of a ``box`` x ``box`` cue in ``CUE_SLOTS[slot]``.

    ``margin`` (B,) is the gap to the border, ``shift`` (B,) a displacement along the edge.
    """
    edge, along = CUE_SLOTS[slot]
    centre = np.clip(round(along * size - box / 2) + shift, 0, size - box)
    near, far = margin, size - box - margin
    if edge in ("top", "bottom"):
        rows = near if edge == "top" else far
        return np.stack([rows, centre], axis=1).astype(np.int64)
    cols = near if edge == "left" else far
    return np.stack([centre, cols], axis=1).astype(np.int64)


def cue_glyph(index: int, box: int) -> np.ndarray:
    """A ``box`` x ``box`` boolean glyph, different for consecutive cues: a hollow square, a
    plus, a dot, a bar, a cross and a solid square, like pen marks, clips or electrodes."""
    glyph = np.zeros((box, box), dtype=bool)
    mid, stroke = box // 2, max(1, round(box / 4))
    lo, hi = mid - stroke // 2, mid - stroke // 2 + stroke
    kind = index % 6
    if kind == 0:
        glyph[:, :] = True
        glyph[stroke:box - stroke, stroke:box - stroke] = False
    elif kind == 1:
        glyph[lo:hi, :] = True
        glyph[:, lo:hi] = True
    elif kind == 2:
        r, c = np.ogrid[:box, :box]
        glyph[(r - (box - 1) / 2) ** 2 + (c - (box - 1) / 2) ** 2 <= (box / 2) ** 2] = True
    elif kind == 3:
        glyph[lo:hi, :] = True
    elif kind == 4:
        r, c = np.ogrid[:box, :box]
        glyph[(np.abs(r - c) < stroke) | (np.abs(r + c - (box - 1)) < stroke)] = True
    else:
        glyph[:, :] = True
    return glyph


def sample_pixels(weights: np.ndarray, k: int, rng: np.random.Generator,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``k`` pixels per image with replacement, with probability proportional to ``weights``.

    ``weights``: non-negative ``(B, H, W)``. Returns ``(rows, cols)`` (B, k) int64 arrays and a
    ``(B,)`` bool array telling which images had any positive weight (the others' draws are
    meaningless). One batched ``searchsorted`` over the row-offset cumulative sums.
    """
    b, h, w = weights.shape
    flat = weights.reshape(b, h * w).astype(np.float64)
    cdf = np.cumsum(flat, axis=1)
    total = cdf[:, -1]
    # Offsetting each row by more than any total makes the concatenated CDF monotone.
    offset = (np.arange(b) * (total.max() + 1.0))[:, None]
    targets = rng.random((b, k)) * total[:, None] + offset
    idx = np.searchsorted((cdf + offset).ravel(), targets.ravel(), side="right")
    idx = np.minimum(idx.reshape(b, k) - np.arange(b)[:, None] * (h * w), h * w - 1)
    # Round-off can push a draw just past its row's end; give it the row's last positive pixel
    # so that a zero-weight pixel is never returned.
    bad = flat[np.arange(b)[:, None], idx] <= 0
    if bad.any():
        last = h * w - 1 - np.argmax(flat[:, ::-1] > 0, axis=1)
        idx = np.where(bad, last[:, None], idx)
    return idx // w, idx % w, total > 0


def sample_pixels_coarse(weights: np.ndarray, k: int, rng: np.random.Generator, step: int,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sample_pixels` on a ``step``-pixel subgrid, then a uniform jitter within the cell.

    For smooth weight maps this costs ``1 / step²`` as much; a pixel near a region's edge may
    then fall just outside it, so use it only where that does not matter.
    """
    _, h, w = weights.shape
    rows, cols, ok = sample_pixels(weights[:, step // 2::step, step // 2::step], k, rng)
    rows = np.minimum(rows * step + rng.integers(0, step, rows.shape), h - 1)
    cols = np.minimum(cols * step + rng.integers(0, step, cols.shape), w - 1)
    return rows, cols, ok


def far_from_boxes(rows: np.ndarray, cols: np.ndarray, origins: np.ndarray, box: int,
                   radius: int) -> np.ndarray:
    """True where a pixel (B, k) is more than ``radius`` pixels (Chebyshev) from the image's box.

    A Gaussian truncated at ``radius`` and centred on such a pixel is exactly zero on the box.
    """
    r0, c0 = origins[:, 0, None], origins[:, 1, None]
    dr = np.maximum(np.maximum(r0 - rows, rows - (r0 + box - 1)), 0)
    dc = np.maximum(np.maximum(c0 - cols, cols - (c0 + box - 1)), 0)
    return np.maximum(dr, dc) > radius


def fixation_maps(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                  shape: tuple[int, int, int], sigma: float, truncate: float,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Gaze heatmaps and fixated-pixel masks from weighted fixations.

    ``rows``, ``cols``, ``weights``: (B, k); a weight of 0 drops the fixation. Returns
    ``gaze`` float32 (B, H, W), the sum over fixations of ``weight`` times a unit-mass Gaussian
    of ``sigma`` pixels truncated to exactly 0 beyond :func:`truncation_radius` pixels in
    either axis (the kernel of ``scipy.ndimage.gaussian_filter`` with ``mode="constant"``), and
    ``fixations`` bool (B, H, W).

    Each Gaussian is separable, so the whole batch is a sum of outer products of
    per-fixation row and column profiles (:func:`sum_of_outer_products`): much cheaper than
    filtering full-size images, exactly 0 wherever every profile product is 0, and the same
    bits on every CPU. The profile takes its values from a table over the integer offsets,
    computed with Python's ``math.exp``, so no SIMD kernel of numpy touches them either.
    """
    _, h, w = shape
    radius = truncation_radius(sigma, truncate)
    table = np.array([math.exp(-0.5 * (t / sigma) ** 2) for t in range(-radius, radius + 1)])
    table /= math.fsum(table)  # fsum: an exactly rounded sum, independent of summation order

    def profile(centres: np.ndarray, length: int) -> np.ndarray:  # (B, k) -> (B, k, length)
        d = np.arange(length)[None, None, :] - centres[:, :, None]
        inside = np.abs(d) <= radius
        return np.where(inside, table[np.clip(d + radius, 0, 2 * radius)], 0.0)

    gy = profile(rows, h) * weights[:, :, None].astype(np.float32).astype(np.float64)
    gaze = sum_of_outer_products(gy, profile(cols, w))
    fixations = np.zeros(shape, dtype=bool)
    keep = weights > 0
    fixations[np.nonzero(keep)[0], rows[keep], cols[keep]] = True
    return gaze, fixations


def sum_of_outer_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_k a[:, k, :, None] * b[:, k, None, :]`` as float32 (B, H, W), the same on any CPU.

    ``a``: (B, k, H), ``b``: (B, k, W). This is the batched matrix product ``a^T @ b``, but
    ``np.matmul`` hands it to BLAS, whose summation order depends on the kernel the CPU selects
    (OpenBLAS's Haswell and SkylakeX kernels differ in the last bit). Here every term is added
    in the order of ``k``, in float64, with elementwise operations only (exact IEEE arithmetic
    whatever the SIMD width), and rounded to float32 once at the end.
    """
    out = np.zeros((a.shape[0], a.shape[2], b.shape[2]), dtype=np.float64)
    for k in range(a.shape[1]):
        out += a[:, k, :, None] * b[:, k, None, :]
    return out.astype(np.float32)


def sum_in_order(a: np.ndarray) -> np.ndarray:
    """The sum over the last axis of ``a``, added left to right: (..., k) -> (...).

    numpy's reductions may add in an order that depends on the SIMD width they were built for;
    this one does not.
    """
    out = np.zeros(a.shape[:-1], dtype=a.dtype)
    for k in range(a.shape[-1]):
        out += a[..., k]
    return out


def smooth_noise_bank(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """A float32 ``(3 size, 3 size)`` field of Gaussian-smoothed noise with unit standard
    deviation, to crop per-image textures from with :func:`crop_bank`.

    Filtering one field and cropping it at random offsets costs far less than filtering a fresh
    noise image per image.
    """
    field = pm.gaussian_filter(rng.standard_normal((3 * size, 3 * size), dtype=np.float32),
                               sigma, mode="wrap").astype(np.float32)
    field /= np.float32(pm.std(field))
    return field


def crop_bank(bank: np.ndarray, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``size`` x ``size`` crops of ``bank``, each randomly flipped in both
    axes: float32 ``(count, size, size)``."""
    span = bank.shape[-1] - size
    offsets = rng.integers(0, span + 1, (count, 2))
    flips = rng.random((count, 2)) < 0.5
    out = []
    for (r0, c0), (fr, fc) in zip(offsets, flips):
        crop = bank[r0:r0 + size, c0:c0 + size]
        out.append(crop[::-1 if fr else 1, ::-1 if fc else 1])
    return np.stack(out)


def truncation_radius(sigma: float, truncate: float) -> int:
    """The support radius, in pixels, of ``scipy.ndimage.gaussian_filter``'s kernel."""
    return int(truncate * float(sigma) + 0.5)


def make_ids(source: str, n: int) -> np.ndarray:
    """Stable ids ``<source>-000123`` (at least six digits)."""
    width = max(6, len(str(n - 1)))
    return np.asarray([f"{source}-{i:0{width}d}" for i in range(n)], dtype=object)


def synth_attrs(kind: str, params: dict[str, object], strength_meaning: str,
                slots: Sequence[str]) -> dict[str, object]:
    """File attributes recording the generator and all of its parameters (as sorted JSON)."""
    return {
        "synth_kind": kind,
        "synth_params": json.dumps(params, sort_keys=True),
        "confounder_meaning": strength_meaning,
        "confounder_slots": ",".join(slots),
    }


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` rows covering ``range(n)``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]

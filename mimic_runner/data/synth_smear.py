"""Synthetic thin-blood-smear cell crops (in the spirit of the NIH malaria data set).

* **Images** — RGB uint8 ``(N, 3, S, S)``: one round, slightly irregular, pink-purple stained
  red cell on a dark background, with jitter in cell size, shape, colour, stain texture,
  brightness and noise. Classes ``Parasitized`` (one to three ring-form trophozoites: a thin
  dark-purple ring with a chromatin dot, inside the cell) and ``Uninfected``, balanced. Stain
  debris (small dull dots) appears in both classes, so a dark dot alone is not the answer.
* **Gaze** — the human attention map is where a microscopist looks: ``fixations`` is the
  parasite pixels and ``gaze`` those pixels dilated by one pixel and smoothed by a Gaussian
  truncated to exactly 0 beyond ``2 sigma``. Uninfected images hold no parasite, so their
  ``gaze`` is all zero and their ``fixations`` empty (metrics that normalise the gaze must skip
  or guard such images).
* **Shortcut** — a small bright square (like a dust speck or a slide label) in an image corner,
  on the background. In the train split its corner follows the class (``confounder_strength``),
  in val and test it is random; its pixels are stored as ``confounder``. Parasites are placed
  far enough from it that ``gaze`` is exactly 0 on it.

Unlike chest X-rays the crops are not naturally aligned (``aligned=False``).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from scipy import ndimage

from mimic_runner.data import _portable_math as pm
from mimic_runner.data import _synth_common as common

SOURCE = "synth_smear"
# Bump when the same parameters would give other arrays: it keys the generated-data cache.
# 2: bit-identical on every CPU (portable exp/sin/cos/arctan2 and Gaussian filter).
GENERATOR_VERSION = 2
CLASS_NAMES = ("Parasitized", "Uninfected")
PARASITIZED, UNINFECTED = 0, 1
_CHUNK = 32  # images per vectorised block
_TRUNCATE = 2.0  # the gaze Gaussian is exactly 0 beyond this many sigmas
_EDGE = 0.05  # soft cell edge in normalised units (about 1.6 px at 64 px)
_PARASITE_RGB = np.array([0.30, 0.08, 0.42], dtype=np.float32)  # Giemsa-stained chromatin
_DEBRIS_RGB = np.array([0.36, 0.26, 0.46], dtype=np.float32)  # duller, greyer stain debris
_MARKER_RGB = np.array([0.96, 0.96, 0.88], dtype=np.float32)


def generate(
    n: int = 3000,
    size: int = 64,
    seed: int = 0,
    *,
    confounder_strength: float = 0.9,
    marker: bool = True,
    marker_size: float = 0.09,
    cell_radius: float = 0.74,
    cell_radius_jitter: float = 0.08,
    parasite_contrast: float = 0.7,
    parasite_size: float = 0.085,
    max_parasites: int = 3,
    debris_prob: float = 0.4,
    debris_contrast: float = 0.75,
    noise: float = 0.035,
    colour_jitter: float = 0.05,
    gaze_sigma: float = 0.02,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
) -> dict[str, Any]:
    """Generate the dataset; the result's keys are keyword arguments of ``write_dataset``.

    Args:
        n: number of images (balanced over the two classes).
        size: image side ``S`` in pixels.
        seed: seed of ``np.random.default_rng``; same seed and parameters, same arrays.
        confounder_strength: in train, probability that the marker sits in its class's corner
            (otherwise a random one of the two corners, so 0 = no shortcut); val and test are
            always random.
        marker: draw the marker at all (False leaves ``confounder`` all False).
        marker_size: marker side as a fraction of ``S``.
        cell_radius: mean cell radius as a fraction of the half-width ``S / 2``.
        cell_radius_jitter: half-range of the uniform jitter of the cell radius.
        parasite_contrast: opacity of a parasite's chromatin dot at full strength (each
            parasite gets 0.4-1 of it; its ring 60% of that).
        parasite_size: mean ring radius as a fraction of the half-width.
        max_parasites: Parasitized cells hold 1..max_parasites rings (fewer more likely).
        debris_prob: probability that a cell (either class) carries stain debris.
        debris_contrast: opacity of the debris dots.
        noise: standard deviation of the per-channel pixel noise (levels in [0, 1]).
        colour_jitter: per-image standard deviation of the stain colour.
        gaze_sigma: sigma of the gaze smoothing as a fraction of ``S``.
        val_frac, test_frac: split fractions (stratified by class).

    Returns:
        ``images`` uint8 (N, 3, S, S), ``labels`` int64 (N,), ``split`` uint8 (N,), ``ids``,
        ``class_names``, ``gaze`` float32 (N, S, S), ``fixations`` bool (N, S, S),
        ``confounder`` bool (N, S, S), ``source``, ``aligned=False`` and ``extra_attrs``.
    """
    local_vars = locals()
    data, _ = generate_with_truth(
        **{k: local_vars[k] for k in inspect.signature(generate).parameters})
    return data


def generate_with_truth(
    n: int = 3000,
    size: int = 64,
    seed: int = 0,
    **knobs: Any,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Like :func:`generate` (same arguments), also returning ground truth not written to file.

    ``truth`` holds bool (N, S, S) masks ``parasites``, ``debris`` and ``cell``; int64 (N,)
    ``n_parasites`` and ``marker_slot`` (index into ``_synth_common.CORNERS``, -1 without
    marker).
    """
    params = inspect.signature(generate).bind(n, size, seed, **knobs)
    params.apply_defaults()
    p = dict(params.arguments)
    _validate(p)
    rng = np.random.default_rng(seed)
    num_classes = len(CLASS_NAMES)

    labels = common.balanced_labels(n, num_classes, rng)
    split = common.stratified_split_nonempty(labels, num_classes, p["val_frac"],
                                             p["test_frac"], rng)
    # Parasite count: 1..max with probability halving at each step (single rings dominate).
    counts = np.arange(1, p["max_parasites"] + 1)
    probs = 0.5 ** (counts - 1)
    n_parasites = np.where(labels == PARASITIZED,
                           rng.choice(counts, size=n, p=probs / probs.sum()), 0)

    box = max(3, round(p["marker_size"] * size))
    if p["marker"]:
        slots = common.marker_slots(labels, split, p["confounder_strength"], num_classes, rng)
        margin = round(0.02 * size) + rng.integers(0, round(0.03 * size) + 1, n)
        origins = common.corner_origins(slots, size, box, margin)
    else:
        slots = np.full(n, -1, dtype=np.int64)
        origins = None

    images = np.empty((n, 3, size, size), dtype=np.uint8)
    gaze = np.empty((n, size, size), dtype=np.float32)
    fixations = np.empty((n, size, size), dtype=bool)
    confounder = np.zeros((n, size, size), dtype=bool)
    truth = {key: np.empty((n, size, size), dtype=bool) for key in ("parasites", "debris", "cell")}
    square = np.ones((box, box), dtype=bool)
    bank = common.smooth_noise_bank(rng, size, sigma=1.5 * size / 64)
    sigma = p["gaze_sigma"] * size
    # Parasite pixels lie within (largest ring radius + dot reach) of a ring centre; adding the
    # one-pixel dilation, the gaze kernel's radius and a pixel of slack gives how far a centre
    # must stay from the marker for the gaze to be exactly 0 on it.
    reach = (int(np.ceil((1.3 * p["parasite_size"] + 0.1) * size / 2)) + 1
             + common.truncation_radius(sigma, _TRUNCATE) + 1)
    chunks = common.chunks(n, _CHUNK)
    for sl, crng in zip(chunks, rng.spawn(len(chunks))):
        idx = np.arange(n)[sl]
        org = origins[idx] if origins is not None else None
        img, maps = _draw_chunk(p, crng, n_parasites[idx], org, box, reach,
                                common.crop_bank(bank, size, len(idx), crng))
        if org is not None:
            conf = common.stamp((len(idx), size, size), square, org)
            img = np.where(conf[:, None], _MARKER_RGB[None, :, None, None], img)
            confounder[sl] = conf
        images[sl] = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
        fix = maps["parasites"]
        spread = ndimage.binary_dilation(fix, structure=np.ones((1, 3, 3), dtype=bool))
        gaze[sl] = pm.gaussian_filter(spread.astype(np.float32), (0, sigma, sigma),
                                      truncate=_TRUNCATE, mode="constant")
        fixations[sl] = fix
        for key in truth:
            truth[key][sl] = maps[key]
    np.maximum(gaze, 0, out=gaze)  # separable-filter round-off must not make values negative
    # Both guaranteed by construction (`reach`, centres inside the cell); a failure is a bug.
    if (gaze[confounder] != 0).any():
        raise AssertionError("synth_smear: gaze overlaps the marker")
    if not fixations[labels == PARASITIZED].any(axis=(1, 2)).all():
        raise AssertionError("synth_smear: a Parasitized image holds no parasite")

    data = {
        "images": images,
        "labels": labels,
        "split": split,
        "ids": common.make_ids(SOURCE, n),
        "class_names": list(CLASS_NAMES),
        "gaze": gaze,
        "fixations": fixations,
        "confounder": confounder,
        "source": SOURCE,
        "aligned": False,
        "extra_attrs": common.synth_attrs(
            SOURCE, p,
            "train: P(marker in class corner) = s + (1 - s)/2; val/test: random corner",
            common.CORNERS[:num_classes]),
    }
    return data, {**truth, "n_parasites": n_parasites.astype(np.int64),
                  "marker_slot": slots.astype(np.int64)}


def _validate(p: dict[str, Any]) -> None:
    common.check_types(p, generate)
    common.check_sizes(p["n"], len(CLASS_NAMES), p["val_frac"], p["test_frac"])
    common.check_range("size", p["size"], 32, 1024)
    for name in ("confounder_strength", "parasite_contrast", "debris_prob", "debris_contrast"):
        common.check_range(name, p[name], 0.0, 1.0)
    common.check_range("marker_size", p["marker_size"], 0.04, 0.15)
    common.check_range("cell_radius", p["cell_radius"], 0.4, 0.85)
    common.check_range("cell_radius_jitter", p["cell_radius_jitter"], 0.0, 0.15)
    common.check_range("parasite_size", p["parasite_size"], 0.05, 0.16)
    common.check_range("max_parasites", p["max_parasites"], 1, 6)
    for name in ("noise", "colour_jitter"):
        common.check_range(name, p[name], 0.0, 0.3)
    common.check_range("gaze_sigma", p["gaze_sigma"], 0.005, 0.05)


def _draw_chunk(p: dict[str, Any], rng: np.random.Generator, n_parasites: np.ndarray,
                origins: np.ndarray | None, box: int, reach: int, texture: np.ndarray,
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render B cells as float32 (B, 3, S, S) RGB in about [0, 1], plus bool masks (B, S, S)
    ``parasites``, ``debris`` and ``cell``.

    Ring centres are drawn inside the cell and more than ``reach`` pixels (Chebyshev) from the
    marker box at ``origins`` (B, 2), so that the gaze never touches the marker.
    """
    size = p["size"]
    bsz = len(n_parasites)
    f32 = np.float32

    def col(a: np.ndarray) -> np.ndarray:  # (B,) -> (B, 1, 1)
        return np.asarray(a, dtype=f32)[:, None, None]

    lin = (np.arange(size, dtype=f32) + 0.5) / size * 2 - 1
    x, y = lin[None, None, :], lin[:, None][None]

    # Cell: a rotated ellipse whose radius wobbles with the 2nd-4th angular harmonics.
    radius = p["cell_radius"] + rng.uniform(-1, 1, bsz) * p["cell_radius_jitter"]
    ecc = rng.uniform(0, 0.12, bsz)
    theta = rng.uniform(0, np.pi, bsz)
    dx, dy = x - col(rng.normal(0, 0.04, bsz)), y - col(rng.normal(0, 0.04, bsz))
    ct, st = col(pm.cos(theta)), col(pm.sin(theta))
    du, dv = ct * dx + st * dy, ct * dy - st * dx
    rho = np.sqrt((du / col(radius * (1 + ecc))) ** 2 + (dv / col(radius * (1 - ecc))) ** 2)
    phi = pm.arctan2(dv, du)
    wobble = np.ones_like(rho)
    for k in (2, 3, 4):
        wobble += col(rng.normal(0, 0.025, bsz)) * pm.cos(k * phi + col(rng.uniform(0, 6.3, bsz)))
    rho /= wobble
    cell = np.clip((1 - rho) * col(radius) / _EDGE + 0.5, 0, 1)

    # Stain: pink-purple, slightly darker at the rim, with a smooth mottled texture.
    stain = np.array([0.78, 0.50, 0.62], dtype=f32) + rng.normal(0, p["colour_jitter"], (bsz, 3))
    stain *= rng.uniform(0.85, 1.1, (bsz, 1))
    shade = (0.9 + 0.12 * np.clip(1 - rho, 0, 1) + 0.035 * texture) * cell
    background = rng.uniform(0.0, 0.05, (bsz, 3)).astype(f32)[:, :, None, None]
    img = background + (stain.astype(f32)[:, :, None, None] - background) * shade[:, None]

    # Ring-form parasites: centres inside the cell (rho < 0.7), away from the marker.
    allowed = (rho < 0.7).astype(f32)
    if origins is not None:
        rows = np.arange(size)[None, :, None]
        cols = np.arange(size)[None, None, :]
        r0, c0 = origins[:, 0, None, None], origins[:, 1, None, None]
        far = np.maximum(np.maximum(r0 - rows, rows - (r0 + box - 1)),
                         np.maximum(c0 - cols, cols - (c0 + box - 1))) > reach
        allowed *= far
    k_max = p["max_parasites"]
    pr, pc, ok = common.sample_pixels(allowed, k_max, rng)
    present = (np.arange(k_max)[None] < n_parasites[:, None]) & ok[:, None]
    parasite = np.zeros(rho.shape, dtype=f32)
    for k in range(k_max):
        on = present[:, k]
        if not on.any():
            continue
        cy, cx = lin[pr[on, k]][:, None, None], lin[pc[on, k]][:, None, None]
        ring_r = col(p["parasite_size"] * rng.uniform(0.7, 1.3, bsz)[on])
        dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        ring = pm.exp(-0.5 * ((dist - ring_r) / f32(0.03)) ** 2)
        # The chromatin dot sits on the ring at a random angle.
        ang = rng.uniform(0, 2 * np.pi, bsz)[on]
        dot_y, dot_x = cy + ring_r * col(pm.sin(ang)), cx + ring_r * col(pm.cos(ang))
        dot = pm.exp(-((x - dot_x) ** 2 + (y - dot_y) ** 2) / f32(2 * 0.05**2))
        strength = col(rng.uniform(0.4, 1.0, bsz)[on])
        parasite[on] = np.maximum(parasite[on], strength * np.maximum(0.6 * ring, dot))
    parasite *= cell

    # Stain debris: one or two small dull dots anywhere on the cell, in either class.
    debris = np.zeros(rho.shape, dtype=f32)
    has_debris = rng.random(bsz) < p["debris_prob"]
    drows, dcols, _ = common.sample_pixels((rho < 0.95).astype(f32), 2, rng)
    for k in range(2):
        on = has_debris & ((k == 0) | (rng.random(bsz) < 0.5))
        if not on.any():
            continue
        cy, cx = lin[drows[on, k]][:, None, None], lin[dcols[on, k]][:, None, None]
        r = col(rng.uniform(0.035, 0.065, bsz)[on])
        debris[on] = np.maximum(debris[on],
                                pm.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)))
    debris *= cell

    alpha_d = (p["debris_contrast"] * debris)[:, None]
    img += (_DEBRIS_RGB[None, :, None, None] - img) * alpha_d
    alpha_p = (p["parasite_contrast"] * parasite)[:, None]
    img += (_PARASITE_RGB[None, :, None, None] - img) * alpha_p
    img += (rng.random(img.shape, dtype=f32) - 0.5) * f32(p["noise"] * np.sqrt(12))

    maps = {"parasites": parasite > 0.2, "debris": (debris > 0.5) & (cell > 0.5),
            "cell": cell > 0.5}
    return img, maps

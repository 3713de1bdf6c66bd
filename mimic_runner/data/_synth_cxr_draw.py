"""Drawing the synthetic chest X-rays of :mod:`.synth_cxr`: the anatomy atlas, one vectorised
block of images with its findings, and the simulated radiologist's gaze."""

from __future__ import annotations

from typing import Any

import numpy as np

from mimic_runner.data import _portable_math as pm
from mimic_runner.data import _synth_common as common

NORMAL, CHF, PNEUMONIA = 0, 1, 2
_TRUNCATE = 3.0  # gaze Gaussians are exactly 0 beyond this many sigmas


def _ramp(dist: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-indicator of a region given an approximate signed distance (< 0 inside)."""
    return np.clip(0.5 - dist / width, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float,
             ) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (exact on circles)."""
    return (np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2) - 1.0) * np.float32(min(a, b))


# The atlas covers anatomical coordinates in [-_EXTENT, _EXTENT]^2: enough margin for the pose
# jitter to never sample outside it (pixels beyond it take the edge value, which is empty air).
_EXTENT = 1.4
_EDGE = 0.04  # soft edge width in normalised units (about 2.5 px at 128 px)
# Atlas layers, in order.
_BASE, _AIR, _BODY, _INNER, _HAZE = range(5)


def _atlas(grid: int) -> np.ndarray:
    """Pose-independent anatomy on a canonical ``grid`` x ``grid`` raster, float32 (5, grid²).

    Layers: ``_BASE`` density of everything but lung air and heart (body, mediastinum, spine,
    trachea, ribs, clavicles); ``_AIR`` lung fields outside the mediastinum, in [0, 1];
    ``_BODY`` body mask; ``_INNER`` 1 well inside the lungs (where consolidations may be
    centred); ``_HAZE`` the perihilar "bat-wing" haze profile of CHF, restricted to the lungs.
    Images sample it at their own pose (nearest neighbour on a raster of about half a pixel),
    which is far cheaper than evaluating every shape for every image.
    """
    lin = ((np.arange(grid, dtype=np.float32) + 0.5) / grid * 2 - 1) * _EXTENT
    u, v = lin[None, :], lin[:, None]
    au = np.abs(u)

    # Body: torso below sloping shoulders, plus the neck.
    shoulders = (-1.05 + 0.45 * np.clip(au - 0.22, 0, None)) - v
    torso = np.maximum(_ellipse(u, v, 0.0, 0.35, 1.0, 1.35), shoulders)
    body = np.maximum(_ramp(torso, _EDGE), _ramp(au - 0.22, _EDGE))
    # Lungs (mirrored through |u|): a rounded apex, widening downwards, the bottom cut by the
    # diaphragm domes (the right one, on the image left, sits higher over the liver) and the
    # inner edge by the mediastinum.
    t = np.clip((v + 0.85) / 1.4, 0, 1)
    half_w = 0.20 + 0.10 * t
    dv = v + 0.02
    r = np.sqrt(((au - (0.39 + 0.03 * t)) / half_w) ** 2
                + np.where(dv < 0, (dv / 0.80) ** 2, ((dv / 0.80) ** 2) ** 3))
    dome = 0.455 + 0.035 * np.sign(u) + 2.6 * (au - 0.38) ** 2
    lung_dist = np.maximum(np.maximum((r - 1) * half_w, v - dome), 0.09 - au)
    upper = np.maximum(au - (0.10 + 0.05 * np.clip(v + 0.7, 0, 1)), np.abs(v + 0.05) - 0.8)
    mediastinum = _ramp(np.minimum(upper, _ellipse(u, v, 0.13, -0.28, 0.07, 0.07)), _EDGE)
    air = _ramp(lung_dist, _EDGE) * (1 - mediastinum)
    spine = _ramp(au - 0.065, _EDGE) * (0.75 + 0.25 * pm.cos((2 * np.pi * 7.5) * v))
    trachea = _ramp(np.maximum(au - 0.028, v + 0.22), _EDGE)
    # Posterior ribs: bands curving down laterally; clavicles rising towards the shoulders.
    ribs = np.clip(1.8 * pm.cos((2 * np.pi * 5.2) * (v - 0.32 * u * u)) - 0.8, 0, 1)
    ribs *= _ramp(np.maximum(_ellipse(au, v, 0.40, -0.02, 0.36, 0.72), 0.07 - au), 0.1)
    clav = _ramp(np.maximum(np.abs(v + 0.56 + 0.22 * (au - 0.1)) - 0.035,
                            np.abs(au - 0.35) - 0.27), _EDGE)
    gastric = _ramp(_ellipse(u, v, 0.36, 0.66, 0.11, 0.055), _EDGE)  # stomach gas bubble
    base = (0.05 + 0.50 * body + 0.12 * mediastinum + 0.07 * spine
            + (0.08 * ribs + 0.10 * clav - 0.10 * trachea - 0.12 * gastric) * body)
    haze = pm.exp(-((au - 0.22) ** 2 / (2 * 0.13**2) + (v - 0.05) ** 2 / (2 * 0.2**2))) * air
    inner = (lung_dist < -0.08) & (mediastinum < 0.01)
    layers = [base, air, body, inner, haze]
    return np.stack([np.broadcast_to(a, (grid, grid)).ravel() for a in layers]).astype(np.float32)


def _draw_chunk(p: dict[str, Any], rng: np.random.Generator, labels: np.ndarray,
                pose: dict[str, np.ndarray], heart_scale: np.ndarray, severity: np.ndarray,
                look: dict[str, np.ndarray], texture: np.ndarray, atlas: np.ndarray,
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render B images as float32 (B, S, S) grey levels in about [0, 1], plus their masks.

    ``texture``: float32 (B, S, S) smooth unit-variance noise for the lung markings;
    ``atlas``: :func:`_atlas` at twice the image size. The masks dict holds bool ``finding``,
    ``lungs``, ``heart``, ``body`` and float32 ``anatomy`` / ``finding_w`` (weights for sampling
    scan-path and finding fixations).
    """
    size = p["size"]
    grid = 2 * size
    f32 = np.float32

    def col(x: np.ndarray) -> np.ndarray:  # (B,) -> (B, 1, 1) for broadcasting over pixels
        return np.asarray(x, dtype=f32)[:, None, None]

    # Every coordinate frame below is an affine function of the pixel grid (x, y), evaluated as
    # a (B, 1, S) row term plus a (B, S, 1) column term: one full-size operation per frame.
    lin = ((np.arange(size, dtype=f32) + 0.5) / size * 2 - 1)
    x, y = lin[None, None, :], lin[:, None][None]

    def affine(cx: np.ndarray, cy: np.ndarray, c0: np.ndarray) -> np.ndarray:
        return col(cx) * x + (col(cy) * y + col(c0))

    # Anatomical coordinates (u, v) undo the image's shift, rotation and scale:
    # u = (cos (x - tu) + sin (y - tv)) / su, v = (cos (y - tv) - sin (x - tu)) / sv.
    cos, sin = pm.cos(pose["rot"]), pm.sin(pose["rot"])
    tu, tv, su, sv = pose["tu"], pose["tv"], pose["su"], pose["sv"]
    u_coef = (cos / su, sin / su, -(cos * tu + sin * tv) / su)
    v_coef = (-sin / sv, cos / sv, (sin * tu - cos * tv) / sv)

    # Atlas cells (nearest neighbour) of every pixel.
    to_cell = grid / (2 * _EXTENT)
    iu = affine(*(c * to_cell for c in u_coef[:2]), (u_coef[2] + _EXTENT) * to_cell)
    iv = affine(*(c * to_cell for c in v_coef[:2]), (v_coef[2] + _EXTENT) * to_cell)
    cell = np.clip(iv, 0, grid - 1).astype(np.intp) * grid
    cell += np.clip(iu, 0, grid - 1).astype(np.intp)
    base, air, body = (atlas[k].take(cell) for k in (_BASE, _AIR, _BODY))  # (B, S, S) each

    # Heart: an ellipse resting on the left dome, its long axis tilted down to the image right
    # (angle 0.45 rad); it grows with its scale, mostly to the right and upwards. (eu, ev) are
    # the pixel's coordinates in the frame where the heart is the unit disc.
    hs = heart_scale
    centre_u, centre_v = 0.11 + 0.12 * (hs - 1), 0.61 - 0.22 * hs
    half_a, half_b = 0.31 * hs, 0.21 * hs
    ca, sa = float(pm.cos(0.45)), float(pm.sin(0.45))
    du = (u_coef[0], u_coef[1], u_coef[2] - centre_u)  # u - centre_u
    dv = (v_coef[0], v_coef[1], v_coef[2] - centre_v)
    eu = affine(*((ca * a + sa * b) / half_a for a, b in zip(du, dv)))
    ev = affine(*((ca * b - sa * a) / half_b for a, b in zip(du, dv)))
    heart_dist = (np.sqrt(eu * eu + ev * ev) - 1) * col(np.minimum(half_a, half_b))
    heart = _ramp(heart_dist, _EDGE)
    outside_heart = 1 - heart
    lungs = air * outside_heart
    # The heart shows as a silhouette where it displaces lung air, slightly denser than the
    # chest wall; elsewhere it merges with the mediastinum and the diaphragm.
    density = base + (0.04 * heart + (p["mottle"] * texture - 0.37) * outside_heart) * air

    # Findings.
    sev = col(severity)
    finding = np.zeros(heart.shape, dtype=bool)
    finding_w = np.zeros(heart.shape, dtype=f32)
    is_chf = _subset(labels == CHF)
    if is_chf is not None:
        haze = atlas[_HAZE].take(cell[is_chf]) * outside_heart[is_chf]
        density[is_chf] += p["chf_haze"] * sev[is_chf] * haze
        finding[is_chf] = (haze > 0.4) | (heart[is_chf] > 0.5)
        finding_w[is_chf] = finding[is_chf]
    is_pna = _subset(labels == PNEUMONIA)
    if is_pna is not None:
        inner = atlas[_INNER].take(cell[is_pna]) * (heart_dist[is_pna] > 0.06)
        blobs = _consolidations(p, rng, inner, lungs[is_pna])
        blobs *= lungs[is_pna]
        density[is_pna] += p["pneumonia_contrast"] * sev[is_pna] * blobs
        finding[is_pna] = blobs > 0.5
        finding_w[is_pna] = blobs * (blobs > 0.5)

    # Acquisition: contrast, brightness, gamma, then noise (uniform, scaled to std `noise`).
    img = pm.power(np.clip(density * col(look["contrast"]) + col(look["bright"]), 0, 1),
                   col(look["gamma"]))
    img += (rng.random(img.shape, dtype=f32) - 0.5) * f32(p["noise"] * np.sqrt(12))

    maps = {
        "finding": finding, "lungs": lungs > 0.5, "heart": heart > 0.5, "body": body > 0.5,
        "anatomy": air + 0.8 * heart, "finding_w": finding_w,
    }
    return img, maps


def _subset(mask: np.ndarray) -> np.ndarray | slice | None:
    """An index for the images in ``mask``: None if none, a view-giving slice if all."""
    if not mask.any():
        return None
    return slice(None) if mask.all() else mask


def _consolidations(p: dict[str, Any], rng: np.random.Generator, inner: np.ndarray,
                    lungs: np.ndarray) -> np.ndarray:
    """One or two irregular consolidations per image, float32 (B, S, S) in [0, 1].

    Each is three overlapping round Gaussian lobes around a centre drawn from ``inner`` (well
    inside the lung fields, sampled on a 2-pixel grid; ``lungs`` is the fallback should an
    image have no such pixel). A
    round lobe is separable in pixel rows and columns, so all lobes of the batch are one
    batched matrix product of row and column profiles.
    """
    bsz, size, _ = inner.shape
    rows, cols, ok = common.sample_pixels_coarse(inner, 2, rng, step=2)
    if not ok.all():
        rows2, cols2, _ = common.sample_pixels(lungs, 2, rng)
        rows[~ok], cols[~ok] = rows2[~ok], cols2[~ok]
    count = rng.integers(1, 3, bsz)
    radius = (p["pneumonia_radius"] * size / 2) * rng.uniform(0.75, 1.25, (bsz, 2, 1))  # px
    lobe_r = radius * rng.uniform(0.7, 1.0, (bsz, 2, 3))
    lobe_row = rows[:, :, None] + rng.normal(0, 0.5, (bsz, 2, 3)) * radius
    lobe_col = cols[:, :, None] + rng.normal(0, 0.5, (bsz, 2, 3)) * radius
    on = np.broadcast_to((np.arange(2)[None, :] < count[:, None])[:, :, None], (bsz, 2, 3))
    pix = np.arange(size)[None, None, :]

    def profile(centre: np.ndarray) -> np.ndarray:  # (B, 2, 3) -> (B, 6, S)
        z = (pix - centre.reshape(bsz, 6, 1)) / lobe_r.reshape(bsz, 6, 1)
        return pm.exp(-0.5 * z * z).astype(np.float32).astype(np.float64)

    gy = profile(lobe_row) * on.reshape(bsz, 6, 1)
    field = common.sum_of_outer_products(gy, profile(lobe_col))
    return np.clip(field, 0.0, 1.0)


def _simulate_gaze(p: dict[str, Any], rng: np.random.Generator, labels: np.ndarray,
                   maps: dict[str, np.ndarray], avoid: list[tuple[Any, ...]],
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Gaze heatmaps float32 (B, S, S) and fixation masks bool (B, S, S) for one chunk.

    Scan fixations are drawn over lungs and heart (sampled on a 4-pixel grid, then jittered
    within the cell: the anatomy is smooth at that scale), finding fixations of abnormal images
    from the finding with longer dwell. Fixations whose truncated Gaussian would reach an
    artefact's box are dropped, which makes ``gaze`` exactly 0 on it. ``avoid`` lists the
    artefacts: ``(origins (B, 2), box)`` for the marker, ``(origins, box, present (B,))`` for
    a cue that only some images carry.
    """
    bsz, size, _ = maps["anatomy"].shape
    n_scan, n_find = p["gaze_scan_fixations"], p["gaze_finding_fixations"]
    abnormal = labels != NORMAL
    sr, sc, _ = common.sample_pixels_coarse(maps["anatomy"], n_scan + n_find // 2, rng, step=4)
    fr = np.zeros((bsz, n_find), dtype=np.int64)
    fc = np.zeros((bsz, n_find), dtype=np.int64)
    has = np.zeros(bsz, dtype=bool)
    sub = _subset(abnormal)
    if sub is not None:
        fr[sub], fc[sub], has[sub] = common.sample_pixels(maps["finding_w"][sub], n_find, rng)
    # Dwell times: gamma-distributed around 1 (scan) and gaze_finding_dwell (finding).
    w_scan = rng.gamma(4.0, 0.25, sr.shape)
    w_scan[abnormal, n_scan:] = 0  # abnormal images spend that time on the finding instead
    w_find = rng.gamma(4.0, 0.25 * p["gaze_finding_dwell"], fr.shape) * (abnormal & has)[:, None]
    focus = p["gaze_finding_focus"]
    if focus > 0:  # skipped at 0 so that the default's float arithmetic is untouched
        # Move that share of the scan dwell onto the finding fixations, in proportion to their
        # own dwell: the radiologist looks where the finding is, for as long as before.
        found = common.sum_in_order(w_find)
        on = abnormal & has & (found > 0)
        moved = focus * common.sum_in_order(w_scan[on, :n_scan])
        w_scan[on, :n_scan] *= 1 - focus
        w_find[on] *= (1 + moved / found[on])[:, None]
    rows, cols = np.concatenate([sr, fr], 1), np.concatenate([sc, fc], 1)
    weights = np.concatenate([w_scan, w_find], 1)
    sigma = p["gaze_sigma"] * size
    radius = common.truncation_radius(sigma, _TRUNCATE)
    for origins, box, *present in avoid:
        far = common.far_from_boxes(rows, cols, origins, box, radius)
        weights *= far | ~present[0][:, None] if present else far
    return common.fixation_maps(rows, cols, weights, (bsz, size, size), sigma, _TRUNCATE)

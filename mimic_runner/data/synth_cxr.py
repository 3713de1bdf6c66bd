"""Synthetic chest X-rays with simulated radiologist eye-gaze and a shortcut artefact.

A stand-in for the EGD / MIMIC-CXR data of "Learning How to MIMIC" that generates in seconds:

* **Images** — grey PA chest radiographs, uint8 ``(N, 1, S, S)``: body and shoulders against
  dark air, two lung fields with ribs and clavicles, mediastinum, spine, trachea, the cardiac
  silhouette and the diaphragm domes, each image with small jitter in position, scale,
  rotation, heart size, contrast, gamma and noise. Classes ``Normal``, ``CHF`` (enlarged
  cardiac silhouette plus bilateral perihilar haze) and ``pneumonia`` (one or two focal
  consolidations inside the lungs), balanced; abnormal findings get a random severity so that
  some cases are subtle.
* **Gaze** — a simulated radiologist: a scan path of fixations over lungs and heart, plus, for
  abnormal images, longer fixations on the finding. ``fixations`` marks the fixated pixels and
  ``gaze`` is the sum of one Gaussian per fixation (weighted by its dwell time), truncated to
  exactly 0 beyond ``3 sigma``.
* **Shortcut** — a bright burned-in "L" marker in an image corner, outside the anatomy. In the
  train split its corner follows the class (``confounder_strength``), in val and test it is
  random; its pixels are stored as ``confounder``. Fixations closer to the marker than the
  Gaussians' truncation radius are dropped, so ``gaze`` is exactly 0 on it.

Coordinates: anatomy is drawn in normalised image coordinates ``(u, v)`` in ``[-1, 1]``, ``u`` to
the image right (the patient's left, as in a PA film) and ``v`` downwards.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from mimic_runner.data import _synth_common as common

SOURCE = "synth_cxr"
CLASS_NAMES = ("Normal", "CHF", "pneumonia")
NORMAL, CHF, PNEUMONIA = 0, 1, 2
_CHUNK = 16  # images per vectorised block: small enough that the float32 maps stay in cache
_TRUNCATE = 3.0  # gaze Gaussians are exactly 0 beyond this many sigmas


def _ramp(dist: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-indicator of a region given an approximate signed distance (< 0 inside)."""
    return np.clip(0.5 - dist / width, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: Any, cv: Any, a: Any, b: Any) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (exact on circles)."""
    scale = np.minimum(a, b)
    if np.ndim(scale) == 0:  # a float64 numpy scalar would promote every map to float64
        scale = np.float32(scale)
    return (np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2) - 1.0) * scale


def generate(
    n: int = 3000,
    size: int = 128,
    seed: int = 0,
    *,
    confounder_strength: float = 0.9,
    marker: bool = True,
    marker_size: float = 0.09,
    marker_intensity: float = 0.97,
    chf_heart_scale: float = 1.18,
    heart_scale_sd: float = 0.07,
    chf_haze: float = 0.08,
    pneumonia_contrast: float = 0.12,
    pneumonia_radius: float = 0.07,
    severity_min: float = 0.3,
    noise: float = 0.05,
    mottle: float = 0.04,
    jitter: float = 1.0,
    gaze_sigma: float = 0.03,
    gaze_scan_fixations: int = 14,
    gaze_finding_fixations: int = 12,
    gaze_finding_dwell: float = 2.0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
) -> dict[str, Any]:
    """Generate the dataset; the result's keys are keyword arguments of ``write_dataset``.

    Args:
        n: number of images (balanced over the three classes).
        size: image side ``S`` in pixels.
        seed: seed of ``np.random.default_rng``; same seed and parameters, same arrays.
        confounder_strength: in train, probability that the marker sits in its class's corner
            (otherwise a random corner, so 0 = no shortcut); val and test are always random.
        marker: draw the marker at all (False leaves ``confounder`` all False).
        marker_size: marker side as a fraction of ``S``.
        marker_intensity: marker grey level in [0, 1].
        chf_heart_scale: mean heart scale of CHF images (Normal/pneumonia: 1).
        heart_scale_sd: per-image standard deviation of the heart scale (class overlap).
        chf_haze: peak density of the perihilar haze at full severity.
        pneumonia_contrast: peak density of a consolidation at full severity.
        pneumonia_radius: consolidation radius as a fraction of the half-width.
        severity_min: abnormal findings get a severity uniform in ``[severity_min, 1]``.
        noise: standard deviation of the pixel noise (grey levels in [0, 1]).
        mottle: amplitude of the smooth texture over the lungs (hides faint findings).
        jitter: multiplier of the pose jitter (shift, scale, rotation); 0 = perfectly aligned.
        gaze_sigma: gaze Gaussian sigma as a fraction of ``S``.
        gaze_scan_fixations: scan-path fixations per image over lungs and heart.
        gaze_finding_fixations: extra fixations on the finding (abnormal images); Normal
            images get half as many extra scan fixations instead.
        gaze_finding_dwell: mean dwell time of a finding fixation relative to a scan fixation.
        val_frac, test_frac: split fractions (stratified by class).

    Returns:
        ``images`` uint8 (N, 1, S, S), ``labels`` int64 (N,), ``split`` uint8 (N,), ``ids``,
        ``class_names``, ``gaze`` float32 (N, S, S), ``fixations`` bool (N, S, S),
        ``confounder`` bool (N, S, S), ``source``, ``aligned=True`` and ``extra_attrs``.
    """
    data, _ = generate_with_truth(**_bound_args(locals()))
    return data


def _bound_args(local_vars: dict[str, Any]) -> dict[str, Any]:
    """``generate``'s arguments from its ``locals()``."""
    return {k: local_vars[k] for k in inspect.signature(generate).parameters}


def generate_with_truth(
    n: int = 3000,
    size: int = 128,
    seed: int = 0,
    **knobs: Any,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Like :func:`generate` (same arguments), also returning ground truth not written to file.

    ``truth`` holds bool (N, S, S) masks ``finding`` (CHF: heart plus perihilar haze;
    pneumonia: the consolidations; Normal: empty), ``lungs``, ``heart`` and ``body``; float32
    (N,) ``heart_scale`` and ``severity`` (0 for Normal); int64 (N,) ``marker_slot`` (index
    into ``_synth_common.CORNERS``, -1 without marker).
    """
    params = inspect.signature(generate).bind(n, size, seed, **knobs)
    params.apply_defaults()
    p = dict(params.arguments)
    _validate(p)
    rng = np.random.default_rng(seed)
    num_classes = len(CLASS_NAMES)

    labels = common.balanced_labels(n, num_classes, rng)
    split = common.stratified_split(labels, num_classes, p["val_frac"], p["test_frac"], rng)

    # Per-image scalars, drawn up front so each image's pose does not depend on chunking.
    j = p["jitter"]
    pose = {
        "tu": rng.normal(0, 0.03 * j, n), "tv": rng.normal(0, 0.03 * j, n),
        "scale": 1 + rng.normal(0, 0.035 * j, n),
        "rot": np.deg2rad(rng.normal(0, 3.0 * j, n)),
        "lung_w": 1 + rng.normal(0, 0.03 * j, n),
    }
    heart_scale = rng.normal(1.0, p["heart_scale_sd"], n)
    heart_scale[labels == CHF] += p["chf_heart_scale"] - 1.0
    heart_scale = np.clip(heart_scale, 0.7, 1.7)
    severity = np.where(labels == NORMAL, 0.0, rng.uniform(p["severity_min"], 1.0, n))
    look = {"contrast": rng.uniform(0.85, 1.15, n), "bright": rng.normal(0, 0.03, n),
            "gamma": rng.uniform(0.8, 1.25, n)}

    box = max(4, round(p["marker_size"] * size))
    if p["marker"]:
        slots = common.marker_slots(labels, split, p["confounder_strength"], num_classes, rng)
        margin = round(0.02 * size) + rng.integers(0, round(0.03 * size) + 1, n)
        origins = common.corner_origins(slots, size, box, margin)
    else:
        slots = np.full(n, -1, dtype=np.int64)
        origins = np.zeros((n, 2), dtype=np.int64)

    images = np.empty((n, 1, size, size), dtype=np.uint8)
    gaze = np.empty((n, size, size), dtype=np.float32)
    fixations = np.empty((n, size, size), dtype=bool)
    confounder = np.zeros((n, size, size), dtype=bool)
    truth = {key: np.empty((n, size, size), dtype=bool)
             for key in ("finding", "lungs", "heart", "body")}
    glyph = common.letter_l(box)
    bank = common.smooth_noise_bank(rng, size, sigma=2.0 * size / 128)
    # One child generator per chunk: per-pixel randomness independent of the other chunks.
    chunk_rngs = rng.spawn(len(common.chunks(n, _CHUNK)))
    for sl, crng in zip(common.chunks(n, _CHUNK), chunk_rngs):
        idx = np.arange(n)[sl]
        texture = common.crop_bank(bank, size, len(idx), crng)
        img, maps = _draw_chunk(p, crng, labels[idx], {k: v[idx] for k, v in pose.items()},
                                heart_scale[idx], severity[idx],
                                {k: v[idx] for k, v in look.items()}, texture)
        if p["marker"]:
            conf = common.stamp(img.shape, glyph, origins[idx])
            img[conf] = p["marker_intensity"]
            confounder[sl] = conf
        images[sl, 0] = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
        gaze[sl], fixations[sl] = _simulate_gaze(p, crng, labels[idx], maps,
                                                 origins[idx] if p["marker"] else None, box)
        for key in truth:
            truth[key][sl] = maps[key]

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
        "aligned": True,
        "extra_attrs": common.synth_attrs(
            SOURCE, p,
            "train: P(marker in class corner) = s + (1 - s)/3; val/test: random corner",
            common.CORNERS[:num_classes]),
    }
    truth_out: dict[str, np.ndarray] = {
        **truth,
        "heart_scale": heart_scale.astype(np.float32),
        "severity": severity.astype(np.float32),
        "marker_slot": slots.astype(np.int64),
    }
    return data, truth_out


def _validate(p: dict[str, Any]) -> None:
    common.check_sizes(p["n"], len(CLASS_NAMES), p["val_frac"], p["test_frac"])
    common.check_range("size", p["size"], 48, 1024)
    for name in ("confounder_strength", "marker_intensity", "severity_min"):
        common.check_range(name, p[name], 0.0, 1.0)
    common.check_range("marker_size", p["marker_size"], 0.03, 0.15)
    common.check_range("chf_heart_scale", p["chf_heart_scale"], 0.8, 1.5)
    common.check_range("heart_scale_sd", p["heart_scale_sd"], 0.0, 0.3)
    for name in ("chf_haze", "pneumonia_contrast", "noise", "mottle"):
        common.check_range(name, p[name], 0.0, 0.5)
    common.check_range("pneumonia_radius", p["pneumonia_radius"], 0.02, 0.2)
    common.check_range("jitter", p["jitter"], 0.0, 3.0)
    common.check_range("gaze_sigma", p["gaze_sigma"], 0.005, 0.08)
    common.check_range("gaze_scan_fixations", p["gaze_scan_fixations"], 1, 200)
    common.check_range("gaze_finding_fixations", p["gaze_finding_fixations"], 1, 200)
    common.check_range("gaze_finding_dwell", p["gaze_finding_dwell"], 0.1, 20.0)


def _draw_chunk(p: dict[str, Any], rng: np.random.Generator, labels: np.ndarray,
                pose: dict[str, np.ndarray], heart_scale: np.ndarray, severity: np.ndarray,
                look: dict[str, np.ndarray], texture: np.ndarray,
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render B images as float32 (B, S, S) grey levels in about [0, 1], plus their masks.

    ``texture``: float32 (B, S, S) smooth unit-variance noise for the lung markings. The masks
    dict holds bool ``finding``, ``lungs``, ``heart``, ``body`` and float32 ``anatomy`` /
    ``finding_w`` (weights for sampling scan-path and finding fixations). Every step is a
    whole-batch array operation (no scipy filters: they dominate the cost at this size).
    """
    size = p["size"]
    f32 = np.float32

    def col(x: np.ndarray) -> np.ndarray:  # (B,) -> (B, 1, 1) for broadcasting over pixels
        return np.asarray(x, dtype=f32)[:, None, None]

    lin = ((np.arange(size, dtype=f32) + 0.5) / size * 2 - 1)
    x, y = lin[None, None, :], lin[:, None][None]
    cos, sin = col(np.cos(pose["rot"])), col(np.sin(pose["rot"]))
    dx, dy = x - col(pose["tu"]), y - col(pose["tv"])
    inv = 1 / col(pose["scale"])
    u = (cos * inv) * dx + (sin * inv) * dy
    v = (cos * inv) * dy - (sin * inv) * dx
    au = np.abs(u)
    edge = 0.04  # soft edges of about 2.5 px at 128 px

    # Body: torso below sloping shoulders, plus the neck.
    torso = np.maximum(_ellipse(u, v, 0.0, 0.3, 0.95, 1.3), (-0.58 + 0.38 * u * u) - v)
    body = np.maximum(_ramp(torso, edge), _ramp(au - 0.21, edge))

    # Lungs: one ellipse per side (mirrored through |u|), cut by the diaphragm domes (the right
    # dome, on the image left, sits higher over the liver) and the mediastinum.
    lw = col(pose["lung_w"])
    dome = 0.455 + 0.035 * np.sign(u) + 2.6 * (au - 0.38 * lw) ** 2
    lung_dist = np.maximum(np.maximum(_ellipse(au, v, 0.40 * lw, 0.02, 0.29 * lw, 0.68),
                                      v - dome), 0.09 - au)
    lung_shape = _ramp(lung_dist, edge)

    # Heart: an ellipse resting on the left dome, mostly to the image right; grows with scale.
    hs = col(heart_scale)
    heart_dist = _ellipse(u, v, 0.10 + 0.06 * (hs - 1), 0.58 - 0.25 * hs, 0.28 * hs, 0.25 * hs)
    heart = _ramp(heart_dist, edge)
    upper = np.maximum(au - (0.10 + 0.05 * np.clip(v + 0.7, 0, 1)), np.abs(v + 0.15) - 0.7)
    mediastinum = _ramp(np.minimum(upper, _ellipse(u, v, 0.13, -0.28, 0.07, 0.07)), edge)
    lungs = lung_shape * (1 - heart) * (1 - mediastinum)

    spine = _ramp(au - 0.065, edge) * (0.75 + 0.25 * np.cos((2 * np.pi * 7.5) * v))
    trachea = _ramp(np.maximum(au - 0.028, v + 0.22), edge)
    # Posterior ribs: bands curving down laterally; clavicles rising towards the shoulders.
    ribs = np.clip(1.8 * np.cos((2 * np.pi * 5.2) * (v - 0.32 * u * u)) - 0.8, 0, 1)
    ribs *= _ramp(np.maximum(_ellipse(au, v, 0.40, -0.02, 0.36, 0.72), 0.07 - au), 0.1)
    clav = _ramp(np.maximum(np.abs(v + 0.56 + 0.22 * (au - 0.1)) - 0.035,
                            np.abs(au - 0.35) - 0.27), edge)

    density = (0.05 + 0.50 * body + 0.12 * mediastinum + 0.08 * heart + 0.07 * spine
               + (0.08 * ribs + 0.10 * clav - 0.10 * trachea) * body
               + (p["mottle"] * texture - 0.37) * lungs)

    # Findings.
    sev = col(severity)
    finding = np.zeros(u.shape, dtype=bool)
    finding_w = np.zeros(u.shape, dtype=f32)
    is_chf = labels == CHF
    if is_chf.any():
        au_c, v_c = au[is_chf], v[is_chf]
        haze = np.exp((au_c - 0.22) ** 2 * (-1 / (2 * 0.13**2))
                      + (v_c - 0.05) ** 2 * (-1 / (2 * 0.2**2))) * lungs[is_chf]
        density[is_chf] += p["chf_haze"] * sev[is_chf] * haze
        finding[is_chf] = (haze > 0.4) | (heart[is_chf] > 0.5)
        finding_w[is_chf] = finding[is_chf]
    is_pna = labels == PNEUMONIA
    if is_pna.any():
        blobs = _consolidations(p, rng, u[is_pna], v[is_pna], lung_dist[is_pna],
                                heart_dist[is_pna])
        blobs *= lungs[is_pna]
        density[is_pna] += p["pneumonia_contrast"] * sev[is_pna] * blobs
        finding[is_pna] = blobs > 0.5
        finding_w[is_pna] = blobs * (blobs > 0.5)

    # Acquisition: contrast, brightness, gamma, then noise (uniform, scaled to std `noise`).
    img = np.clip(density * col(look["contrast"]) + col(look["bright"]), 0, 1) ** col(look["gamma"])
    img += (rng.random(img.shape, dtype=f32) - 0.5) * f32(p["noise"] * np.sqrt(12))

    maps = {
        "finding": finding, "lungs": lungs > 0.5, "heart": heart > 0.5, "body": body > 0.5,
        "anatomy": (lung_shape + 0.8 * heart), "finding_w": finding_w,
    }
    return img, maps


def _consolidations(p: dict[str, Any], rng: np.random.Generator, u: np.ndarray, v: np.ndarray,
                    lung_dist: np.ndarray, heart_dist: np.ndarray) -> np.ndarray:
    """One or two irregular consolidations per image, float32 (B, S, S) in [0, 1].

    Each is three overlapping Gaussian lobes; centres are drawn well inside the lung fields.
    """
    bsz, size, _ = u.shape
    inner = ((lung_dist < -0.08) & (heart_dist > 0.06)).astype(np.float32)
    rows, cols, ok = common.sample_pixels(inner, 2, rng)
    if not ok.all():  # unreachable with the validated knobs; fall back to the lung shape
        rows2, cols2, _ = common.sample_pixels((lung_dist < 0).astype(np.float32), 2, rng)
        rows[~ok], cols[~ok] = rows2[~ok], cols2[~ok]
    b = np.arange(bsz)[:, None]
    cu, cv = u[b, rows, cols], v[b, rows, cols]  # centres in anatomical coordinates
    count = rng.integers(1, 3, bsz)
    radius = p["pneumonia_radius"] * rng.uniform(0.75, 1.25, (bsz, 2))
    field = np.zeros(u.shape, dtype=np.float32)
    for k in range(2):
        on = count > k
        if not on.any():
            continue
        for _ in range(3):
            r = radius[on, k] * rng.uniform(0.55, 0.9, bsz)[on]
            ou = cu[on, k] + rng.normal(0, 0.5, bsz)[on] * radius[on, k]
            ov = cv[on, k] + rng.normal(0, 0.5, bsz)[on] * radius[on, k]
            scale = (-0.5 / r**2).astype(np.float32)[:, None, None]
            field[on] += np.exp(((u[on] - ou[:, None, None].astype(np.float32)) ** 2
                                 + (v[on] - ov[:, None, None].astype(np.float32)) ** 2) * scale)
    return np.clip(field, 0.0, 1.0)


def _simulate_gaze(p: dict[str, Any], rng: np.random.Generator, labels: np.ndarray,
                   maps: dict[str, np.ndarray], origins: np.ndarray | None, box: int,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Gaze heatmaps float32 (B, S, S) and fixation masks bool (B, S, S) for one chunk.

    Scan fixations are drawn over lungs and heart (sampled on a 4-pixel grid, then jittered
    within the cell: the anatomy is smooth at that scale), finding fixations of abnormal images
    from the finding with longer dwell. Fixations whose truncated Gaussian would reach the
    marker's box are dropped, which makes ``gaze`` exactly 0 on the marker.
    """
    bsz, size, _ = maps["anatomy"].shape
    n_scan, n_find = p["gaze_scan_fixations"], p["gaze_finding_fixations"]
    abnormal = labels != NORMAL
    step = 4
    sr, sc, _ = common.sample_pixels(maps["anatomy"][:, step // 2::step, step // 2::step],
                                     n_scan + n_find // 2, rng)
    sr = np.minimum(sr * step + rng.integers(0, step, sr.shape), size - 1)
    sc = np.minimum(sc * step + rng.integers(0, step, sc.shape), size - 1)
    fr = np.zeros((bsz, n_find), dtype=np.int64)
    fc = np.zeros((bsz, n_find), dtype=np.int64)
    has = np.zeros(bsz, dtype=bool)
    if abnormal.any():
        fr[abnormal], fc[abnormal], has[abnormal] = common.sample_pixels(
            maps["finding_w"][abnormal], n_find, rng)
    # Dwell times: gamma-distributed around 1 (scan) and gaze_finding_dwell (finding).
    w_scan = rng.gamma(4.0, 0.25, sr.shape)
    w_scan[abnormal, n_scan:] = 0  # abnormal images spend that time on the finding instead
    w_find = rng.gamma(4.0, 0.25 * p["gaze_finding_dwell"], fr.shape) * (abnormal & has)[:, None]
    rows, cols = np.concatenate([sr, fr], 1), np.concatenate([sc, fc], 1)
    weights = np.concatenate([w_scan, w_find], 1)
    sigma = p["gaze_sigma"] * size
    if origins is not None:
        radius = common.truncation_radius(sigma, _TRUNCATE)
        weights *= common.far_from_boxes(rows, cols, origins, box, radius)
    return common.fixation_maps(rows, cols, weights, (bsz, size, size), sigma, _TRUNCATE)

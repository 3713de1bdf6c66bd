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
  ``gaze`` is the sum of one unit-mass Gaussian per fixation weighted by its dwell time,
  truncated to exactly 0 beyond ``3 sigma`` along either axis (a square support, like the kernel
  of ``scipy.ndimage.gaussian_filter``).
* **Shortcut** — a bright burned-in "L" marker in an image corner (top-left, top-right or
  bottom-right), never on the lungs, heart or findings (see ``jitter``). In the train split,
  with probability ``confounder_strength`` (s) it sits in its class's corner (Normal: top-left,
  CHF: top-right, pneumonia: bottom-right) and otherwise in a random one, so the corner predicts
  the train label with accuracy ``s + (1 - s) / 3``; in val and test the corner is random. Its
  pixels are stored as ``confounder``. Fixations closer to the marker than the Gaussians'
  truncation radius are dropped, so ``gaze`` is exactly 0 on it.
* **Weak cues** (``cues`` > 0, off by default) — small artefacts (a hollow square, a plus, a
  dot, ...) at their own places on the border (:data:`._synth_common.CUE_SLOTS`), cue ``j``
  belonging to class ``j % 3``: in train an image carries it with probability
  ``s + (1 - s)/2`` when of that class and ``(1 - s)/2`` otherwise (``s = cue_strength``), in
  val and test independently of the class. Each is only moderately predictive, so ensemble
  members may adopt different ones. Their pixels join ``confounder``; gaze avoids them too.
* **Finding** — the finding's true extent is written as ``finding`` (CHF: enlarged heart plus
  perihilar haze; pneumonia: the consolidations; Normal: empty).

Benchmark variants (``conf/data/synth_cxr_clean.yaml``, ``synth_cxr_cues.yaml``) switch the
marker off, add the cues, and set ``gaze_finding_focus`` so that the simulated radiologist
dwells on the finding of abnormal images; the defaults reproduce the original data exactly.

Coordinates: anatomy is drawn in normalised image coordinates ``(u, v)`` in ``[-1, 1]``, ``u`` to
the image right (the patient's left, as in a PA film) and ``v`` downwards.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from mimic_runner.data import _synth_common as common
from mimic_runner.data._synth_cxr_draw import (
    CHF,
    NORMAL,
    _atlas,
    _draw_chunk,
    _simulate_gaze,
)

SOURCE = "synth_cxr"
# Bump when the same parameters would give other arrays: it keys the generated-data cache.
# 2: files also hold the `finding` mask (images, labels, gaze, fixations and confounder are
# unchanged from 1 for the same parameters; tests/test_synth_cxr.py pins them by hash).
# 3: bit-identical on every CPU (no BLAS, no SIMD-dispatched transcendental functions: see
# _portable_math); gaze values and a few pixels moved by one rounding step from 2.
GENERATOR_VERSION = 3
CLASS_NAMES = ("Normal", "CHF", "pneumonia")
_CHUNK = 16  # images per vectorised block: small enough that the float32 maps stay in cache


def generate(
    n: int = 3000,
    size: int = 128,
    seed: int = 0,
    *,
    confounder_strength: float = 0.9,
    marker: bool = True,
    marker_size: float = 0.08,
    marker_intensity: float = 0.97,
    chf_heart_scale: float = 1.28,
    heart_scale_sd: float = 0.07,
    chf_haze: float = 0.16,
    pneumonia_contrast: float = 0.26,
    pneumonia_radius: float = 0.1,
    severity_min: float = 0.5,
    noise: float = 0.05,
    mottle: float = 0.04,
    jitter: float = 1.0,
    gaze_sigma: float = 0.03,
    gaze_scan_fixations: int = 14,
    gaze_finding_fixations: int = 12,
    gaze_finding_dwell: float = 2.0,
    gaze_finding_focus: float = 0.0,
    cues: int = 0,
    cue_strength: float = 0.5,
    cue_size: float = 0.05,
    cue_intensity: float = 0.85,
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
            Up to the default 1, with ``marker_size`` up to its default, the marker never
            touches the lungs, heart or findings (pose draws are clipped at 2 sd).
        gaze_sigma: gaze Gaussian sigma as a fraction of ``S``.
        gaze_scan_fixations: scan-path fixations per image over lungs and heart.
        gaze_finding_fixations: extra fixations on the finding (abnormal images); Normal
            images get half as many extra scan fixations instead.
        gaze_finding_dwell: mean dwell time of a finding fixation relative to a scan fixation.
        gaze_finding_focus: share of an abnormal image's scan-path dwell time moved onto its
            finding fixations (total dwell unchanged): 0 keeps the original gaze (about 68%
            of CHF and 49% of pneumonia gaze mass on the finding), 1 leaves only the finding
            fixations. Normal images keep their scan path.
        cues: number of weak spurious cues (0-6), each at its own place on the border.
        cue_strength: in train, probability that cue ``j`` is present exactly when the image
            is of class ``j % 3`` (otherwise a fair coin); val and test: independent of class.
        cue_size: cue side as a fraction of ``S``.
        cue_intensity: cue grey level in [0, 1].
        val_frac, test_frac: split fractions (stratified by class).

    Returns:
        ``images`` uint8 (N, 1, S, S), ``labels`` int64 (N,), ``split`` uint8 (N,), ``ids``,
        ``class_names``, ``gaze`` float32 (N, S, S), ``fixations`` bool (N, S, S),
        ``confounder`` bool (N, S, S) (marker and cue pixels), ``finding`` bool (N, S, S),
        ``source``, ``aligned=True`` and ``extra_attrs``.
    """
    local_vars = locals()
    data, _ = generate_with_truth(
        **{k: local_vars[k] for k in inspect.signature(generate).parameters})
    return data


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
    into ``_synth_common.CORNERS``, -1 without marker); bool (N, cues) ``cue_present``.
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

    # Per-image scalars, drawn up front so each image's pose does not depend on chunking. Pose
    # draws are clipped at 2 sd so that no image's anatomy drifts under a corner marker.
    j = p["jitter"]

    def jittered(sd: float) -> np.ndarray:
        return np.clip(rng.normal(0, sd * j, n), -2 * sd * j, 2 * sd * j)

    pose = {"tu": jittered(0.03), "tv": jittered(0.03), "su": 1 + jittered(0.045),
            "sv": 1 + jittered(0.035), "rot": np.deg2rad(jittered(3.0))}
    heart_scale = rng.normal(1.0, p["heart_scale_sd"], n)
    heart_scale[labels == CHF] += p["chf_heart_scale"] - 1.0
    heart_scale = np.clip(heart_scale, 0.7, 1.7)
    severity = np.where(labels == NORMAL, 0.0, rng.uniform(p["severity_min"], 1.0, n))
    look = {"contrast": rng.uniform(0.85, 1.15, n), "bright": rng.normal(0, 0.03, n),
            "gamma": rng.uniform(0.8, 1.25, n)}

    box = max(4, round(p["marker_size"] * size))
    if p["marker"]:
        slots = common.marker_slots(labels, split, p["confounder_strength"], num_classes, rng)
        margin = round(0.015 * size) + rng.integers(0, round(0.02 * size) + 1, n)
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
    atlas = _atlas(2 * size)
    # Images are rendered grouped by class, so that nearly every chunk holds one class and the
    # class-specific steps run on whole chunks instead of masked copies.
    order = np.argsort(labels, kind="stable")
    # One child generator per chunk: per-pixel randomness independent of the other chunks.
    chunk_rngs = rng.spawn(len(common.chunks(n, _CHUNK)))
    # Cues draw last from the main generator, so that without cues nothing above changes and
    # with them the images are those of the same seed without cues, plus the cues.
    cues = _place_cues(p, rng, labels, split)
    avoid = [(origins, box)] if p["marker"] else []
    avoid += [(o, cues["box"], on) for o, on in zip(cues["origins"], cues["present"].T)]
    for sl, crng in zip(common.chunks(n, _CHUNK), chunk_rngs):
        idx = order[sl]
        texture = common.crop_bank(bank, size, len(idx), crng)
        img, maps = _draw_chunk(p, crng, labels[idx], {k: v[idx] for k, v in pose.items()},
                                heart_scale[idx], severity[idx],
                                {k: v[idx] for k, v in look.items()}, texture, atlas)
        if p["marker"]:
            conf = common.stamp(img.shape, glyph, origins[idx])
            img[conf] = p["marker_intensity"]
            confounder[idx] = conf
        for glyph_j, origins_j, present_j in zip(cues["glyphs"], cues["origins"],
                                                 cues["present"].T):
            cue = common.stamp(img.shape, glyph_j, origins_j[idx]) & present_j[idx, None, None]
            img[cue] = p["cue_intensity"]
            confounder[idx] |= cue
        images[idx, 0] = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
        gaze[idx], fixations[idx] = _simulate_gaze(
            p, crng, labels[idx], maps, [(o[idx], b, *(m[idx] for m in rest))
                                         for o, b, *rest in avoid])
        for key in truth:
            truth[key][idx] = maps[key]

    data = {
        "images": images,
        "labels": labels,
        "split": split,
        "ids": common.make_ids(SOURCE, n),
        "class_names": list(CLASS_NAMES),
        "gaze": gaze,
        "fixations": fixations,
        "confounder": confounder,
        "finding": truth["finding"],
        "source": SOURCE,
        "aligned": True,
        "extra_attrs": _attrs(p, num_classes),
    }
    truth_out: dict[str, np.ndarray] = {
        **truth,
        "heart_scale": heart_scale.astype(np.float32),
        "severity": severity.astype(np.float32),
        "marker_slot": slots.astype(np.int64),
        "cue_present": cues["present"],
    }
    return data, truth_out


def _place_cues(p: dict[str, Any], rng: np.random.Generator, labels: np.ndarray,
                split: np.ndarray) -> dict[str, Any]:
    """Presence (N, cues), top-left origins (one (N, 2) array per cue), glyphs and box side."""
    n, size, k = len(labels), p["size"], p["cues"]
    box = max(3, round(p["cue_size"] * size))
    if k == 0:  # no draws at all: the default output stays bit-for-bit what it was
        return {"present": np.zeros((n, 0), dtype=bool), "origins": [], "glyphs": [],
                "box": box}
    present = common.cue_presence(labels, split, len(CLASS_NAMES), k, p["cue_strength"], rng)
    reach = round(0.02 * size)
    margin = round(0.015 * size) + rng.integers(0, reach + 1, (k, n))
    shift = rng.integers(-reach, reach + 1, (k, n))
    slots = list(common.CUE_SLOTS)[:k]
    origins = [common.cue_origins(s, size, box, margin[j], shift[j]) for j, s in enumerate(slots)]
    glyphs = [common.cue_glyph(j, box) for j in range(k)]
    return {"present": present, "origins": origins, "glyphs": glyphs, "box": box}


def _attrs(p: dict[str, Any], num_classes: int) -> dict[str, object]:
    """File attributes: the parameters and what ``confounder`` holds."""
    meaning = []
    if p["marker"]:
        meaning.append("marker: train: P(marker in class corner) = s + (1 - s)/3; val/test: "
                       "random corner")
    if p["cues"]:
        meaning.append(f"{p['cues']} weak cues, cue j for class j % {num_classes}: train: "
                       "P(cue j | its class) = c + (1 - c)/2, P(cue j | other) = (1 - c)/2 "
                       "(c = cue_strength); val/test: independent of the class")
    attrs = common.synth_attrs(SOURCE, p, "; ".join(meaning) or "none: no shortcut artefact",
                               common.CORNERS[:num_classes] if p["marker"] else ())
    if p["cues"]:
        attrs["cue_slots"] = ",".join(list(common.CUE_SLOTS)[:p["cues"]])
        attrs["cue_classes"] = ",".join(CLASS_NAMES[j % num_classes] for j in range(p["cues"]))
    return attrs


def _validate(p: dict[str, Any]) -> None:
    common.check_types(p, generate)
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
    common.check_range("jitter", p["jitter"], 0.0, 1.5)
    common.check_range("gaze_sigma", p["gaze_sigma"], 0.005, 0.08)
    common.check_range("gaze_scan_fixations", p["gaze_scan_fixations"], 1, 200)
    common.check_range("gaze_finding_fixations", p["gaze_finding_fixations"], 1, 200)
    common.check_range("gaze_finding_dwell", p["gaze_finding_dwell"], 0.1, 20.0)
    common.check_range("gaze_finding_focus", p["gaze_finding_focus"], 0.0, 1.0)
    common.check_range("cues", p["cues"], 0, len(common.CUE_SLOTS))
    common.check_range("cue_strength", p["cue_strength"], 0.0, 1.0)
    common.check_range("cue_size", p["cue_size"], 0.02, 0.08)
    common.check_range("cue_intensity", p["cue_intensity"], 0.0, 1.0)

"""PEPPR — Progressive Erasing Plus Progressive Restoration — as functions on tensors.

Checks that an explanation used as a pixel *ranking* is faithful to the model (Engelmann et al.
2021, for global explanations of aligned images): erase the top-k of the ranked pixels (k on a
grid from 0 to 100 %) and watch accuracy fall; start from the fully erased image and restore
the top-k and watch it come back. A faithful ranking makes erasing fall faster, and
restoration recover faster, than a random ranking.

Conventions (reasons in docs/global-explanations.md):

* images are uint8 (N, C, H, W); erasing happens in the model's *input space*: ``x = image/255``,
  erased pixels (all channels) replaced by a ``fill`` in the same [0, 1] units, then the caller's
  ``normalise`` and the model;
* a ranking is ``ranks`` (R, P) int, P = H·W, ``ranks[r, p]`` the position of pixel ``p``
  (raster order) in ranking ``r``, 0 = most important; an image ``i`` uses ranking
  ``rank_index[i]`` (one global ranking, one per class, or one per image);
* step ``i`` of ``S`` touches ``counts[i]`` pixels (:func:`step_counts`: round(i·P/(S−1)),
  symmetric so that ``counts[i] + counts[S−1−i] == P``); erasing step i replaces the pixels
  with ``rank < counts[i]``, restoration step i shows only those and fills the rest;
* ties in a ranking map are broken by a seeded random permutation, never by raster order
  (which would erase the top rows of a flat region first).

The grid, rankings and masks live in :mod:`mimic_runner.explain.erasing` (re-exported here);
this module evaluates the curves with a model and scores them against a random order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from mimic_runner.explain.erasing import (
    MODES,
    curve_auc,
    gaussian_blur,
    inverse_ranks,
    is_symmetric,
    perturb,
    random_patch_ranks,
    random_ranks,
    rank_pixels,
    step_counts,
)

__all__ = [
    "METRICS",
    "MODES",
    "PerturbationResult",
    "curve_auc",
    "gaussian_blur",
    "inverse_ranks",
    "is_symmetric",
    "mirror_result",
    "peppr_curves",
    "per_image_auc",
    "perturb",
    "predict_batched",
    "random_patch_ranks",
    "random_ranks",
    "rank_pixels",
    "reading",
    "step_counts",
    "summarise_peppr",
]

#: Curve metrics. ``accuracy`` and ``p_true`` score the model against the true labels (the
#: paper's view); ``agreement`` (prediction unchanged from the clean image) and ``p_pred``
#: (probability of the clean prediction) score it against itself, which is what faithfulness
#: to the *model* means when its clean accuracy is low (e.g. a shortcut model on data where
#: the shortcut no longer holds).
METRICS = ("accuracy", "p_true", "agreement", "p_pred")


@dataclass
class PerturbationResult:
    """Per-step, per-image outcome of one ranking and mode.

    ``probs`` (S, N, K) softmax of the perturbed images' logits; ``labels`` (N,) true classes;
    ``reference`` (N,) the clean images' predictions.
    """

    probs: Tensor
    labels: Tensor
    reference: Tensor

    def per_image(self, metric: str) -> Tensor:
        """(S, N) float values of one of :data:`METRICS`."""
        if metric in ("accuracy", "agreement"):
            target = self.labels if metric == "accuracy" else self.reference
            return (self.probs.argmax(-1) == target).float()
        if metric in ("p_true", "p_pred"):
            target = self.labels if metric == "p_true" else self.reference
            idx = target.view(1, -1, 1).expand(self.probs.shape[0], -1, 1)
            return self.probs.gather(-1, idx).squeeze(-1)
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")

    def curve(self, metric: str) -> Tensor:
        """(S,) mean of ``metric`` over images at each step."""
        return self.per_image(metric).mean(dim=1)

    @property
    def accuracy(self) -> Tensor:
        """(S,) accuracy per step."""
        return self.curve("accuracy")


def mirror_result(result: PerturbationResult) -> PerturbationResult:
    """Curves of the reversed ranking from the curves of a ranking, for free.

    With :func:`step_counts`' symmetric grid and :func:`inverse_ranks`, erasing the top
    ``counts[i]`` of the reversed ranking leaves exactly the pixels that restoring the top
    ``counts[S-1-i]`` of the ranking shows: ``erase_inverse[i] = restore[S-1-i]`` and
    ``restore_inverse[i] = erase[S-1-i]``. Pass the restoration result to get the inverse
    erasing curve, and vice versa. Exact only when :func:`is_symmetric` holds for the grid.
    """
    return PerturbationResult(probs=result.probs.flip(0), labels=result.labels,
                              reference=result.reference)


Predict = Callable[[Tensor], Tensor]


@torch.no_grad()
def predict_batched(predict: Predict, images: Tensor, normalise: Callable[[Tensor], Tensor],
                    batch_size: int = 256) -> Tensor:
    """Logits (N, K) of uint8 images (N, C, H, W), ``batch_size`` at a time."""
    out = [predict(normalise(images[i:i + batch_size].float() / 255)).float()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def peppr_curves(
    predict: Predict,
    images: Tensor,
    labels: Tensor,
    rankings: Mapping[str, tuple[Tensor, Tensor | None]],
    counts: Tensor,
    fill: Tensor,
    normalise: Callable[[Tensor], Tensor],
    batch_size: int = 256,
    modes: tuple[str, ...] = MODES,
    progress: Callable[[str, int], None] | None = None,
    clean_probs: Tensor | None = None,
) -> dict[str, dict[str, PerturbationResult]]:
    """Evaluate erasing and restoration curves of several rankings, batched.

    Args:
        predict: normalised input (B, C, H, W) -> logits (B, K); called under ``no_grad``.
        images: (N, C, H, W) uint8 on the evaluation device.
        labels: (N,) true classes.
        rankings: name -> ``(ranks (R, P), rank_index (N,) or None)``; ``None`` means image
            ``i`` uses ``ranks[0]`` when R = 1 and ``ranks[i]`` when R = N.
        counts: (S,) from :func:`step_counts` (first 0, last P).
        fill: broadcastable to (N, C, H, W) float in [0, 1] (a first dim of N is per image).
        normalise: [0, 1] float images -> model input.
        batch_size: images per forward pass; when it exceeds N, several steps share a pass.
        modes: which of ``erase`` / ``restore`` to run.
        progress: called as ``progress(ranking_name, n_images_done)`` after each pass.
        clean_probs: (N, K) softmax of the clean images when the caller has it already
            (e.g. to rank by predicted class); otherwise computed here.

    Returns:
        ``{name: {mode: PerturbationResult}}`` (tensors on the CPU). The two ends of every
        curve are shared (k = 0 erasing and k = 100 % restoration are the clean image, the
        opposite ends the fully filled one), so they are evaluated once for all rankings.
    """
    n, c, h, w = images.shape
    p = h * w
    if labels.shape != (n,):
        raise ValueError(f"labels must be ({n},), got {tuple(labels.shape)}")
    if counts[0] != 0 or counts[-1] != p:
        raise ValueError("counts must run from 0 to H·W (use step_counts)")
    fill = fill.to(images.device, torch.float32)
    per_image_fill = fill.dim() == 4 and fill.shape[0] == n and n > 1
    chunk = max(1, min(n, batch_size))
    steps_per_pass = max(1, batch_size // chunk)

    def fill_of(sl: slice) -> Tensor:
        return fill[sl] if per_image_fill else fill

    @torch.no_grad()
    def probs_of(x: Tensor) -> Tensor:
        return predict(normalise(x)).float().softmax(-1).cpu()

    # Shared ends: the clean images and the fully filled ones.
    clean, full = [], []
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        x = images[sl].float() / 255
        if clean_probs is None:
            clean.append(probs_of(x))
        full.append(probs_of(fill_of(sl).expand_as(x)))
    p_clean = torch.cat(clean) if clean_probs is None else clean_probs.float().cpu()
    p_full = torch.cat(full)
    k = p_clean.shape[-1]
    labels = labels.cpu()
    reference = p_clean.argmax(-1)

    inner = counts[1:-1]
    results: dict[str, dict[str, PerturbationResult]] = {}
    for name, (ranks, rank_index) in rankings.items():
        if ranks.dim() != 2 or ranks.shape[1] != p:
            raise ValueError(f"ranking '{name}': ranks must be (R, {p}), got {tuple(ranks.shape)}")
        if rank_index is None:
            if len(ranks) not in (1, n):
                raise ValueError(f"ranking '{name}': {len(ranks)} rankings for {n} images need "
                                 "a rank_index")
            rank_index = (torch.zeros(n, dtype=torch.long) if len(ranks) == 1
                          else torch.arange(n))
        rank_index = rank_index.to(ranks.device).long()
        results[name] = {}
        for mode in modes:
            probs = torch.empty(len(counts), n, k)
            probs[0], probs[-1] = (p_clean, p_full) if mode == "erase" else (p_full, p_clean)
            for start in range(0, n, chunk):
                sl = slice(start, min(start + chunk, n))
                x = images[sl].float() / 255
                r = ranks[rank_index[sl]].to(images.device)
                for s0 in range(0, len(inner), steps_per_pass):
                    cs = inner[s0:s0 + steps_per_pass]
                    xs = perturb(x, fill_of(sl), r, cs, mode)  # (s, b, C, H, W)
                    out = probs_of(xs.reshape(-1, c, h, w))
                    probs[1 + s0:1 + s0 + len(cs), sl] = out.view(len(cs), -1, k)
                    if progress is not None:
                        progress(name, len(cs) * (sl.stop - sl.start))
            results[name][mode] = PerturbationResult(probs=probs, labels=labels,
                                                     reference=reference)
    return results


def per_image_auc(fractions: Tensor, result: PerturbationResult, metric: str) -> Tensor:
    """(N,) area under each image's own curve of ``metric`` (its mean height over k)."""
    return curve_auc(fractions, result.per_image(metric).double().T)


def summarise_peppr(
    fractions: Tensor,
    results: Mapping[str, Mapping[str, PerturbationResult]],
    random_names: list[str] | tuple[str, ...] = (),
    metric: str = "accuracy",
    min_gap: float = 0.01,
    spread_factor: float = 2.0,
) -> dict[str, object]:
    """Areas under the curves, gaps to the random control and a verdict per ranking.

    Args:
        fractions: (S,) erased/restored fraction of pixels per step, 0 to 1.
        results: ``{name: {"erase": ..., "restore": ...}}`` from :func:`peppr_curves` (plus
            mirrored controls), all on the same N images.
        random_names: the names in ``results`` that are random-order seeds.
        metric: the one of :data:`METRICS` that the verdict is based on.
        min_gap, spread_factor: a gap counts when it exceeds its tolerance
            ``max(min_gap, spread_factor · se, spread_factor · seed_std)``: ``se`` is the
            standard error of the gap over images (paired: the per-image differences between
            the random seeds' mean curve and the ranking's curve, ``std / sqrt(N)``), and
            ``seed_std`` the std of the random seeds' AUCs.

    Returns:
        A JSON-ready dict: ``auc[name][mode][metric]`` (mean height of the curve, in the
        metric's units; lower is better for erasing, higher for restoration),
        ``auc[name]["peppr"][metric]`` = restore − erase (0 for a random order in expectation:
        erasing a random k % and restoring a random 1 − k % leave the same kind of image),
        ``random[mode][metric]`` = {mean, std, n}, ``gap_to_random[name][mode][metric]``
        (positive = better than random: ``random − erase`` and ``restore − random``),
        ``gap_se[name][mode][metric]``, ``tolerance[name][mode]`` (on ``metric``),
        ``verdict[name]`` on ``metric`` (``faithful``: both gaps beyond their tolerance;
        ``anti-faithful``: both beyond it the wrong way; ``partly faithful
        (erasing|restoration)``; ``≈ random``), ``metric``, and ``verdicts[metric][name]``
        for every metric.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    modes = [m for m in MODES if all(m in r for r in results.values())]
    auc: dict[str, dict[str, dict[str, float]]] = {}
    for name, res in results.items():
        auc[name] = {m: {k: float(curve_auc(fractions, res[m].curve(k))) for k in METRICS}
                     for m in modes}
        if len(modes) == 2:
            auc[name]["peppr"] = {k: auc[name]["restore"][k] - auc[name]["erase"][k]
                                  for k in METRICS}
    out: dict[str, object] = {"auc": auc, "metric": metric}
    rnd = [n for n in random_names if n in auc]
    if not rnd:
        out["verdict"] = {n: "no random control (0 seeds)" for n in auc}
        return out
    random: dict[str, dict[str, dict[str, float]]] = {}
    random_per_image: dict[tuple[str, str], Tensor] = {}
    for m in modes:
        random[m] = {}
        for k in METRICS:
            v = torch.tensor([auc[n][m][k] for n in rnd], dtype=torch.float64)
            std = float(v.std(correction=1)) if len(v) > 1 else 0.0
            random[m][k] = {"mean": float(v.mean()), "std": std, "n": len(v)}
            random_per_image[m, k] = torch.stack(
                [per_image_auc(fractions, results[n][m], k) for n in rnd]).mean(0)
    gaps: dict[str, dict[str, dict[str, float]]] = {}
    ses: dict[str, dict[str, dict[str, float]]] = {}
    tols: dict[str, dict[str, dict[str, float]]] = {}
    verdicts: dict[str, dict[str, str]] = {k: {} for k in METRICS}
    for name in auc:
        if name in rnd:
            continue
        gaps[name], ses[name], tols[name] = {}, {}, {}
        for m in modes:
            sign = 1.0 if m == "erase" else -1.0  # positive = better than random
            gaps[name][m], ses[name][m], tols[name][m] = {}, {}, {}
            for k in METRICS:
                d = sign * (random_per_image[m, k] - per_image_auc(fractions, results[name][m], k))
                se = float(d.std(correction=1) / len(d) ** 0.5) if len(d) > 1 else 0.0
                gaps[name][m][k] = sign * (random[m][k]["mean"] - auc[name][m][k])
                ses[name][m][k] = se
                tols[name][m][k] = max(min_gap, spread_factor * se,
                                       spread_factor * random[m][k]["std"])
        for k in METRICS:
            verdicts[k][name] = _verdict({m: gaps[name][m][k] for m in modes},
                                         {m: tols[name][m][k] for m in modes})
    out.update(random=random, gap_to_random=gaps, gap_se=ses, verdict=verdicts[metric],
               tolerance={n: {m: t[m][metric] for m in modes} for n, t in tols.items()},
               verdicts=verdicts)
    return out


def _verdict(gaps: Mapping[str, float], tol: Mapping[str, float]) -> str:
    better = {m: g > tol[m] for m, g in gaps.items()}
    worse = {m: g < -tol[m] for m, g in gaps.items()}
    if all(better.values()):
        return "faithful"
    if all(worse.values()):
        return "anti-faithful"
    if any(better.values()):
        return "partly faithful (erasing)" if better.get("erase") else (
            "partly faithful (restoration)")
    return "≈ random"


_METRIC_WORDS = {"accuracy": "accuracy", "p_true": "the probability of the true class",
                 "agreement": "agreement with the clean prediction",
                 "p_pred": "the probability of the clean prediction"}


def reading(name: str, summary: Mapping[str, object], what: str | None = None) -> str:
    """One line saying what a ranking's PEPPR numbers mean (in points of the verdict metric)."""
    what = what or f"the '{name}' ranking"
    metric = str(summary.get("metric", "accuracy"))
    words = _METRIC_WORDS[metric]
    verdict = summary["verdict"][name]  # type: ignore[index]
    gaps = summary.get("gap_to_random", {}).get(name)  # type: ignore[union-attr]
    if gaps is None:
        auc = summary["auc"][name]  # type: ignore[index]
        return (f"{what}: {metric} AUC erasing {auc['erase'][metric]:.3f}, restoration "
                f"{auc['restore'][metric]:.3f} (no random control to compare with)")
    se = summary["gap_se"][name]  # type: ignore[index]
    e, r = gaps["erase"][metric] * 100, gaps["restore"][metric] * 100
    se_e, se_r = se["erase"][metric] * 100, se["restore"][metric] * 100
    erase_words = "lower" if e >= 0 else "higher"
    restore_words = "higher" if r >= 0 else "lower"
    return (f"erasing the pixels {what} ranks highest first leaves {words} {abs(e):.1f} ± "
            f"{se_e:.1f} points {erase_words} than random order (mean over k, ± standard error "
            f"over images), restoring them first {abs(r):.1f} ± {se_r:.1f} points "
            f"{restore_words}: "
            f"{verdict}")

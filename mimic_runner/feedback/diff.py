"""Differences between two model versions: attention on the feedback images and a held-out set.

For the images that carry feedback: the attention share inside the "look here" and the
"not here" regions (and on the confounder, where the data marks one) before and after, and the
predictions. For a held-out split (val or test): accuracy, how many predictions changed, the
attention share on the confounder and the mean absolute change of the attention map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from mimic_runner.feedback.errors import FeedbackConflict
from mimic_runner.feedback.roi import ROI, mass_share, roi_masks
from mimic_runner.training.modules import AttentionBranchModule

MAX_LISTED = 200  # per-image rows returned for the feedback images / changed predictions
#: Figures over fewer images than this are marked ``"meaningful": false`` (the page says so).
MIN_MEANINGFUL = 10


class FeedbackSession(Protocol):
    """What this module needs of a :class:`~mimic_runner.feedback.session.FeedbackSession`.

    A protocol rather than an import, so that ``session`` may import this module (it evaluates
    version 1 when a workspace is created) without an import cycle.
    """

    dm: Any
    store: Any
    class_names: list[str]

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def rois_by_image(self) -> dict[str, list[ROI]]: ...

    def batch(self, image_ids: list[str]) -> dict[str, Tensor]: ...

    def model(self, version_id: int | None = None) -> AttentionBranchModule: ...


def nanmean(x: Tensor) -> float | None:
    """Mean over the finite entries; None when there is none (JSON-friendly)."""
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else None


def _ba(before: float | None, after: float | None) -> dict[str, float | None]:
    delta = None if before is None or after is None else after - before
    return {"before": before, "after": after, "delta": delta}


@torch.no_grad()
def forward_maps(module: AttentionBranchModule, images: Tensor) -> tuple[Tensor, Tensor]:
    """Probabilities (B, K) and attention maps (B, H, W) of normalised images (eval mode)."""
    was = module.training
    module.eval()
    probs, maps = module.predict_attention(images)
    module.train(was)
    return probs, maps


def feedback_masks(session: FeedbackSession, image_ids: list[str]
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Include and exclude masks (B, H, W) and weights (B,) of images with regions."""
    grouped = session.rois_by_image()
    inc, exc, w = [], [], []
    for image_id in image_ids:
        i, e, weight = roi_masks(grouped.get(image_id, []), session.height, session.width)
        inc.append(i)
        exc.append(e)
        w.append(weight)
    return torch.stack(inc), torch.stack(exc), torch.tensor(w)


Check = Callable[[], None]  # called before every batch; raises to stop (a cancelled retraining)


def _no_check() -> None:
    return None


def feedback_summary(session: FeedbackSession, modules: dict[str, AttentionBranchModule],
                     image_ids: list[str], batch_size: int = 64, check: Check = _no_check
                     ) -> dict[str, Any]:
    """Per module name: attention share inside the include / exclude regions and on the
    confounder, and the predictions, over the feedback images."""
    out: dict[str, dict[str, list[Any]]] = {k: {} for k in modules}
    for start in range(0, len(image_ids), batch_size):
        check()
        ids = image_ids[start:start + batch_size]
        batch = session.batch(ids)
        inc, exc, _ = feedback_masks(session, ids)
        for name, module in modules.items():
            probs, maps = forward_maps(module, batch["image"])
            rows = out[name]
            rows.setdefault("include_share", []).append(mass_share(maps, inc))
            rows.setdefault("exclude_share", []).append(mass_share(maps, exc))
            rows.setdefault("include_attention", []).append(mean_inside(maps, inc))
            rows.setdefault("exclude_attention", []).append(mean_inside(maps, exc))
            if "confounder" in batch:
                rows.setdefault("confounder_share", []).append(
                    mass_share(maps, batch["confounder"]))
            rows.setdefault("pred", []).append(probs.argmax(-1))
            rows.setdefault("prob", []).append(probs)
            rows.setdefault("label", []).append(batch["label"])
    return {name: {k: torch.cat(v) for k, v in rows.items()} for name, rows in out.items()}


def heldout_summary(session: FeedbackSession, modules: dict[str, AttentionBranchModule],
                    split: str, check: Check = _no_check) -> dict[str, dict[str, Tensor]]:
    """Per module name: predictions (N,), labels (N,), confounder shares (N,) on a split, and
    under ``"_pair"`` the mean absolute map difference (N,) between the first two modules."""
    loader = session.dm.loader(split)
    out: dict[str, dict[str, list[Tensor]]] = {k: {} for k in [*modules, "_pair"]}
    for batch in loader:
        check()
        x = session.dm.normalise(batch["image"])
        maps_seen = []
        for name, module in modules.items():
            probs, maps = forward_maps(module, x)
            maps_seen.append(maps)
            rows = out[name]
            rows.setdefault("pred", []).append(probs.argmax(-1))
            rows.setdefault("label", []).append(batch["label"])
            rows.setdefault("attention_mean", []).append(maps.flatten(1).mean(-1))
            if "confounder" in batch:
                rows.setdefault("confounder_share", []).append(
                    mass_share(maps, batch["confounder"]))
                rows.setdefault("confounder_attention", []).append(
                    mean_inside(maps, batch["confounder"]))
        if len(maps_seen) >= 2:
            out["_pair"].setdefault("abs_change", []).append(
                (maps_seen[1] - maps_seen[0]).abs().flatten(1).mean(-1))
    return {name: {k: torch.cat(v) for k, v in rows.items()} for name, rows in out.items()
            if rows}


def evaluate_version(session: FeedbackSession, module: AttentionBranchModule,
                     split: str = "val", check: Check = _no_check) -> dict[str, Any]:
    """Accuracy and attention shares of one version (recorded with a candidate)."""
    held = heldout_summary(session, {"m": module}, split, check)["m"]
    metrics: dict[str, Any] = {"heldout_split": split,
                               f"{split}/acc": float((held["pred"] == held["label"]).float()
                                                     .mean()),
                               f"{split}/n_images": len(held["pred"])}
    if "confounder_share" in held:
        metrics[f"{split}/confounder_share"] = nanmean(held["confounder_share"])
        metrics[f"{split}/confounder_attention"] = nanmean(held["confounder_attention"])
    ids = sorted(session.rois_by_image())
    if ids:
        fb = feedback_summary(session, {"m": module}, ids, check=check)["m"]
        metrics["feedback/include_share"] = nanmean(fb["include_share"])
        metrics["feedback/exclude_share"] = nanmean(fb["exclude_share"])
        metrics["feedback/n_images"] = len(ids)
    return metrics


def compare_versions(session: FeedbackSession, before: int, after: int,
                     heldout: str = "val") -> dict[str, Any]:
    """The differences between two versions (see the module docstring), JSON-ready."""
    modules = {"before": session.model(before), "after": session.model(after)}
    result: dict[str, Any] = {"before_version": before, "after_version": after}
    ids = sorted(session.rois_by_image())
    fb_block: dict[str, Any] = {"n_images": len(ids), "meaningful": len(ids) >= MIN_MEANINGFUL}
    if ids:
        fb = feedback_summary(session, modules, ids)
        b, a = fb["before"], fb["after"]
        for key in ("include_share", "exclude_share", "confounder_share", "include_attention",
                    "exclude_attention"):
            if key in b:
                fb_block[key] = _ba(nanmean(b[key]), nanmean(a[key]))
        fb_block["accuracy"] = _ba(float((b["pred"] == b["label"]).float().mean()),
                                   float((a["pred"] == a["label"]).float().mean()))
        fb_block["prediction_changes"] = int((b["pred"] != a["pred"]).sum())
        rows = []
        for i, image_id in enumerate(ids[:MAX_LISTED]):
            row: dict[str, Any] = {
                "id": image_id, "label": int(b["label"][i]),
                "pred_before": int(b["pred"][i]), "pred_after": int(a["pred"][i]),
                "prob_before": float(b["prob"][i].max()),
                "prob_after": float(a["prob"][i].max())}
            for key in ("include_share", "exclude_share", "confounder_share"):
                if key in b:
                    row[key] = _ba(_finite(b[key][i]), _finite(a[key][i]))
            rows.append(row)
        fb_block["images"] = rows
    result["feedback"] = fb_block

    held = heldout_summary(session, modules, heldout)
    b, a = held["before"], held["after"]
    changed = torch.nonzero(b["pred"] != a["pred"]).flatten().tolist()
    split_ids = session.dm.ids[heldout]
    hb: dict[str, Any] = {
        "split": heldout, "n_images": len(b["pred"]),
        "meaningful": len(b["pred"]) >= MIN_MEANINGFUL,
        "accuracy": _ba(float((b["pred"] == b["label"]).float().mean()),
                        float((a["pred"] == a["label"]).float().mean())),
        "prediction_changes": len(changed),
        "changed": [{"id": str(split_ids[i]), "label": int(b["label"][i]),
                     "pred_before": int(b["pred"][i]), "pred_after": int(a["pred"][i])}
                    for i in changed[:MAX_LISTED]],
        "mean_abs_attention_change": nanmean(held["_pair"]["abs_change"]),
    }
    if "confounder_share" in b:
        hb["confounder_share"] = _ba(nanmean(b["confounder_share"]),
                                     nanmean(a["confounder_share"]))
        hb["confounder_attention"] = _ba(nanmean(b["confounder_attention"]),
                                         nanmean(a["confounder_attention"]))
    hb["attention_mean"] = _ba(nanmean(b["attention_mean"]), nanmean(a["attention_mean"]))
    result["heldout"] = hb
    right_b, right_a = (b["pred"] == b["label"]).numpy(), (a["pred"] == a["label"]).numpy()
    result["accuracy"] = paired_accuracy(right_b, right_a)
    result["diagnoses"] = diagnoses(right_b, right_a, (b["pred"] != a["pred"]).numpy())
    result["class_names"] = session.class_names
    result["min_meaningful_images"] = MIN_MEANINGFUL
    return result


def mean_inside(maps: Tensor, mask: Tensor) -> Tensor:
    """Mean map value over a mask's pixels, per image: (B, H, W) x2 -> (B,), NaN if empty."""
    m = (mask != 0).to(maps.dtype).flatten(1)
    return (maps.flatten(1) * m).sum(-1) / m.sum(-1)


def _finite(x: Tensor) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


BOOTSTRAP_RESAMPLES = 2000


def paired_accuracy(right_before: np.ndarray, right_after: np.ndarray, seed: int = 0,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Accuracy before and after on the same n images, their difference, and its 95 %
    percentile interval from a paired bootstrap (the images resampled with replacement, both
    versions' answers kept together; seeded, so the same inputs give the same interval).

    Args:
        right_before, right_after: (n,) bool, whether each image was diagnosed correctly.

    Returns:
        ``{"before", "after", "delta", "delta_ci95": [lo, hi], "n", "method"}``; the
        figures are None when n = 0.
    """
    rb, ra = np.asarray(right_before, bool), np.asarray(right_after, bool)
    n = len(rb)
    if n == 0:
        return {"before": None, "after": None, "delta": None, "delta_ci95": [None, None],
                "n": 0, "method": "paired bootstrap"}
    d = ra.astype(np.float64) - rb.astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    deltas = d[idx].mean(axis=1)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"before": float(rb.mean()), "after": float(ra.mean()), "delta": float(d.mean()),
            "delta_ci95": [float(lo), float(hi)], "n": n, "method": "paired bootstrap"}


def diagnoses(right_before: np.ndarray, right_after: np.ndarray, changed: np.ndarray
              ) -> dict[str, int]:
    """How the diagnoses of the same images changed, per direction.

    Args:
        right_before, right_after: (n,) bool, correct before / after.
        changed: (n,) bool, the predicted class differs.

    Returns:
        ``wrong_to_right``, ``right_to_wrong``, ``wrong_to_wrong`` (another wrong class) and
        ``total_changed`` (their sum).
    """
    rb, ra, ch = (np.asarray(x, bool) for x in (right_before, right_after, changed))
    out = {"wrong_to_right": int((~rb & ra).sum()), "right_to_wrong": int((rb & ~ra).sum()),
           "wrong_to_wrong": int((~rb & ~ra & ch).sum())}
    out["total_changed"] = sum(out.values())
    return out


class DiffService:
    """The differences between versions a session serves: defaults for the versions compared,
    and a cache (versions never change; the regions are part of the key)."""

    def __init__(self, session: FeedbackSession, size: int = 64) -> None:
        self.session = session
        self.size = size
        self._cache: dict[tuple[Any, ...], dict[str, Any]] = {}

    def versions(self, before: int | None, after: int | None) -> tuple[int, int]:
        """``after`` defaults to the waiting candidate; ``before`` to the version ``after`` was
        trained from (or, for version 1, the current version)."""
        store = self.session.store
        if after is None:
            cand = store.candidate()
            if cand is None:
                raise FeedbackConflict("there is no candidate to compare; retrain first, or "
                                       "name two versions (?before=1&after=2)")
            after = int(cand["id"])
        parent = store.version(after)["parent"]
        if before is None:
            before = int(parent) if parent is not None else int(store.current()["id"])
        store.version(before)
        return before, after

    def diff(self, before: int | None, after: int | None, heldout: str = "val"
             ) -> dict[str, Any]:
        b, a = self.versions(before, after)
        rois = self.session.store.rois()
        key = (b, a, heldout, tuple((r["id"], r["kind"], repr(r["points"]), r["weight"])
                                    for r in rois))
        if key not in self._cache:
            if len(self._cache) >= self.size:
                self._cache.clear()
            self._cache[key] = compare_versions(self.session, b, a, heldout)
        return self._cache[key]

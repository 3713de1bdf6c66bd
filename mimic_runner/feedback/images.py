"""Finding images: the predictions and attention maps of a whole split (per version, cached),
and the filters and sort orders of the image list (class, prediction, right or wrong, with or
without regions, the share of attention inside a rectangle)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from mimic_runner.feedback.diff import forward_maps
from mimic_runner.feedback.errors import FeedbackInvalid
from mimic_runner.feedback.roi import ROI, mass_share, rasterize_roi
from mimic_runner.training.modules import AttentionBranchModule

SORTS = ("id", "confidence", "-confidence", "attention_share", "-attention_share")
BATCH = 64


class Session(Protocol):
    """What this module needs of a :class:`~mimic_runner.feedback.session.FeedbackSession`."""

    dm: Any

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def model(self, version_id: int | None = None) -> AttentionBranchModule: ...


@dataclass(frozen=True)
class ImageFilter:
    """Which images of a split to list, and in which order (None: no condition).

    ``region``: a rectangle ``(x0, y0, x1, y1)`` in image pixels; the attention share inside
    it (Σ M inside / Σ M) is listed per image and can be sorted on.
    """

    label: int | None = None
    predicted: int | None = None
    correct: bool | None = None
    has_rois: bool | None = None
    region: tuple[float, float, float, float] | None = None
    sort: str = "id"
    version: int | None = None

    @property
    def needs_maps(self) -> bool:
        return self.region is not None


def parse_region(text: str | None) -> tuple[float, float, float, float] | None:
    """``"x0,y0,x1,y1"`` (image pixels) as four numbers, or one clear error."""
    if text is None or text == "":
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise FeedbackInvalid(f"region={text!r}: give x0,y0,x1,y1 in image pixels, e.g. "
                              "0,0,16,16") from None
    return x0, y0, x1, y1


def region_mask(region: tuple[float, float, float, float], height: int, width: int,
                map_height: int, map_width: int) -> Tensor:
    """The (map_height, map_width) mask of a pixel rectangle of an ``height x width`` image."""
    x0, y0, x1, y1 = region
    if not all(np.isfinite(region)) or not (min(x0, x1) >= 0 and max(x0, x1) <= width
                                            and min(y0, y1) >= 0 and max(y0, y1) <= height):
        raise FeedbackInvalid(f"region {x0:g},{y0:g},{x1:g},{y1:g} is not inside the "
                              f"{width}x{height} image (x0,y0,x1,y1 in image pixels)")
    roi = ROI("rect", "include", ((x0 / width, y0 / height), (x1 / width, y1 / height)))
    mask = rasterize_roi(roi, map_height, map_width)
    if not bool(mask.any()):
        raise FeedbackInvalid(f"region {x0:g},{y0:g},{x1:g},{y1:g} covers no pixel of the "
                              "attention map; draw a larger rectangle")
    return mask


class SplitPredictions:
    """Probabilities (N, K) and attention maps (N, h, w, float16) of every image of a split
    for a version, computed once and kept for the ``size`` most recent (version, split)."""

    def __init__(self, session: Session, size: int = 3) -> None:
        self.session, self.size = session, size
        self._cache: OrderedDict[tuple[int, str], tuple[Tensor, Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version_id: int, split: str) -> tuple[Tensor, Tensor]:
        key = (version_id, split)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        module = self.session.model(version_id)
        images = self.session.dm.splits[split].tensors["image"]
        probs, maps = [], []
        for start in range(0, len(images), BATCH):
            x = self.session.dm.normalise(images[start:start + BATCH])
            p, m = forward_maps(module, x)
            probs.append(p.float())
            maps.append(m.to(torch.float16))
        k = len(self.session.dm.class_names)
        found = (torch.cat(probs) if probs else torch.zeros(0, k),
                 torch.cat(maps) if maps else torch.zeros(0, 1, 1, dtype=torch.float16))
        with self._lock:
            self._cache[key] = found
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return found


def select(labels: np.ndarray, probs: np.ndarray, n_rois: np.ndarray,
           shares: np.ndarray | None, f: ImageFilter) -> np.ndarray:
    """Rows (in the requested order) of the images that pass the filter.

    Args:
        labels: (N,) true classes; probs: (N, K) probabilities; n_rois: (N,) regions per
        image; shares: (N,) attention share inside ``f.region`` (None without a region).
    """
    pred = probs.argmax(-1) if len(probs) else np.zeros(0, int)
    keep = np.ones(len(labels), bool)
    if f.label is not None:
        keep &= labels == f.label
    if f.predicted is not None:
        keep &= pred == f.predicted
    if f.correct is not None:
        keep &= (pred == labels) == f.correct
    if f.has_rois is not None:
        keep &= (n_rois > 0) == f.has_rois
    rows = np.flatnonzero(keep)
    if f.sort == "id":
        return rows
    key_name = f.sort.lstrip("-")
    if key_name == "attention_share":
        if shares is None:
            raise FeedbackInvalid("sort=attention_share needs a region (x0,y0,x1,y1 in image "
                                  "pixels) to measure the share of attention in")
        key = np.nan_to_num(shares[rows], nan=-1.0)
    else:
        key = probs[rows].max(-1) if len(rows) else np.zeros(0)
    order = np.argsort(-key if f.sort.startswith("-") else key, kind="stable")
    return rows[order]


def list_images(session: Session, split: str, n_rois: np.ndarray,
                version_id: int, f: ImageFilter, predictions: SplitPredictions
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The rows that pass ``f`` (ordered) and the per-image columns of the listing:
    ``label``, ``predicted``, ``probability``, ``correct`` and (with a region)
    ``attention_share``."""
    labels = session.dm.splits[split].tensors["label"].numpy().astype(int)
    probs_t, maps = predictions.get(version_id, split)
    probs = probs_t.numpy()
    shares = None
    if f.region is not None and len(maps):
        mask = region_mask(f.region, session.height, session.width, *maps.shape[-2:])
        shares = mass_share(maps.float(), mask.expand_as(maps)).numpy()
    rows = select(labels, probs, n_rois, shares, f)
    pred = probs.argmax(-1) if len(probs) else np.zeros(0, int)
    cols = {"label": labels, "predicted": pred,
            "probability": probs.max(-1) if len(probs) else np.zeros(0),
            "correct": pred == labels}
    if shares is not None:
        cols["attention_share"] = shares
    return rows, cols

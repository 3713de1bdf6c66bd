"""The explanation metrics of a run: which scores, on which maps and images, under which keys.

:class:`ExplanationMetrics` scores one kind of map against the human maps the data has.
:class:`RunEvaluation` holds every group a run reports (keys as in ``metrics.json``, for the
``test`` split; ``val`` for the tuning pass):

==============================  ========================================================
``test/<m>``                    the explanation of the predicted class (the paper's setting)
``test_label/<m>``              the explanation of the true label (what training explains)
``test_correct/<m>``            predicted-class maps of correctly classified images only
``test_class/<class>/kld|nss``  predicted-class maps, images of one true class
``ref/<name>/<m>``              reference maps on the same images (see :mod:`.references`)
``test/kld_at_k``, ``nss_at_k`` ensembles: mean maps of k members, k = 1..N, each score the
                                average over the N cyclic subsets of k members
``test/no_fixation_images``     test images with no fixated pixel (left out of NSS, AUC-Judd)
==============================  ========================================================

``<m>``: ``kld``, ``nss``, ``cc``, ``sim``, ``auc_judd`` (with fixations), ``kld_floor`` and
``gaze_on_zero`` (the zero-pixel diagnostics), ``confounder_share`` and ``finding_share`` (when
the data has those masks).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mimic_runner.errors import UserError
from mimic_runner.metrics.references import (
    cyclic_subset_means,
    grid_like_cam,
    own_gaze_grid,
    uniform_maps,
)
from mimic_runner.metrics.torchmetrics_wrappers import (
    ConfounderShare,
    FindingShare,
    GazeOnZero,
    SaliencyAUCJudd,
    SaliencyCC,
    SaliencyKLD,
    SaliencyKLDFloor,
    SaliencyNSS,
    SaliencySIM,
)

NSS_CHOICES = ("auto", "fixations", "weighted", "quantile", "positive")
REFERENCES = ("uniform", "mean_gaze", "mean_gaze_grid", "own_gaze_grid")


class ExplanationMetrics(nn.Module):
    """KLD, CC, SIM, floored KLD and gaze-on-zero against ``gaze``; NSS and AUC-Judd against
    ``fixations``; the share of the map on ``confounder`` and on ``finding``.

    ``nss_variant``: ``auto`` (fixations if the data has them, else the gaze-weighted NSS),
    ``fixations``, or a gaze variant (``weighted``, ``quantile``, ``positive``; see
    :func:`mimic_runner.metrics.saliency.nss_from_gaze`). The variant actually computed is in
    :attr:`nss_variant_used` and goes into ``metrics.json``. ``only`` keeps a subset of the
    metric names.
    """

    def __init__(self, maps: Sequence[str], nss_variant: str = "auto", prefix: str = "test/",
                 only: Sequence[str] | None = None) -> None:
        super().__init__()
        if nss_variant not in NSS_CHOICES:
            raise UserError(
                f"explain.nss_variant='{nss_variant}': choose one of {', '.join(NSS_CHOICES)}"
            )
        self.prefix = prefix
        self.sources: dict[str, str] = {}  # metric name -> batch key of its target
        metrics: dict[str, nn.Module] = {}
        if "gaze" in maps:
            metrics.update(kld=SaliencyKLD(), cc=SaliencyCC(), sim=SaliencySIM(),
                           kld_floor=SaliencyKLDFloor(), gaze_on_zero=GazeOnZero())
            self.sources.update(kld="gaze", cc="gaze", sim="gaze", kld_floor="gaze",
                                gaze_on_zero="gaze")
        self.nss_variant_used: str | None = None
        use_fix = "fixations" in maps and nss_variant in ("auto", "fixations")
        if use_fix:
            metrics["nss"] = SaliencyNSS(source="fixations")
            metrics["auc_judd"] = SaliencyAUCJudd()
            self.sources.update(nss="fixations", auc_judd="fixations")
        elif "gaze" in maps:
            if nss_variant == "fixations":
                raise UserError(
                    "explain.nss_variant=fixations but the data has no 'fixations' "
                    "map; use auto or a gaze variant (weighted, quantile, positive)"
                )
            variant = "weighted" if nss_variant == "auto" else nss_variant
            metrics["nss"] = SaliencyNSS(source="gaze", variant=variant)
            self.sources["nss"] = "gaze"
        if "nss" in metrics:
            self.nss_variant_used = metrics["nss"].nss_variant  # type: ignore[assignment]
        if "confounder" in maps:
            metrics["confounder_share"] = ConfounderShare()
            self.sources["confounder_share"] = "confounder"
        if "finding" in maps:
            metrics["finding_share"] = FindingShare()
            self.sources["finding_share"] = "finding"
        if only is not None:
            metrics = {k: v for k, v in metrics.items() if k in only}
        self.metrics = nn.ModuleDict(metrics)

    def update(self, maps: Tensor, batch: dict[str, Tensor], rows: Tensor | None = None) -> None:
        """``maps`` (B, H, W) explanations of the images in ``batch``; ``rows`` (B,) bool
        keeps a subset of the images (none kept: nothing happens)."""
        if rows is not None:
            if not bool(rows.any()):
                return
            maps = maps[rows]
        for name, metric in self.metrics.items():
            target = batch[self.sources[name]]
            metric.update(maps.float(), target if rows is None else target[rows])

    def compute(self) -> dict[str, Tensor]:
        """Means per metric; NaN, silently, for a metric that saw no image (an empty subset)."""
        nan = torch.tensor(float("nan"))
        return {f"{self.prefix}{name}": (m.compute().float() if int(m.num_scored)
                                         + int(m.num_skipped) else nan)
                for name, m in self.metrics.items()}

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()


def _safe_key(name: str) -> str:
    """A class name as one key component (``test_class/<name>/kld``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name) or "class"


class RunEvaluation(nn.Module):
    """Every explanation score of a run's test (or validation) pass; see the module docstring.

    ``maps``: the human maps the data has; ``class_names``: for the per-class keys;
    ``ensemble_size``: > 1 adds the averaging curve; ``references``: score the reference maps
    (``mean_gaze`` needs :meth:`set_mean_gaze` first).
    """

    def __init__(self, maps: Sequence[str], class_names: Sequence[str], nss_variant: str = "auto",
                 ensemble_size: int = 1, references: bool = True) -> None:
        super().__init__()
        maps = tuple(maps)
        self.main = ExplanationMetrics(maps, nss_variant, prefix="")
        self.nss_variant_used = self.main.nss_variant_used
        self.has_gaze = "gaze" in maps
        self.label = ExplanationMetrics(maps, nss_variant, prefix="")
        self.correct = ExplanationMetrics(maps, nss_variant, prefix="")
        self.class_names = [_safe_key(c) for c in class_names]
        self.per_class = nn.ModuleList([ExplanationMetrics(maps, nss_variant, prefix="",
                                                           only=("kld", "nss"))
                                        for _ in self.class_names])
        self.refs = nn.ModuleDict({
            name: ExplanationMetrics(maps, nss_variant, prefix="",
                                     only=("kld", "nss", "cc", "sim", "auc_judd"))
            for name in REFERENCES} if references and self.has_gaze else {})
        self.mean_gaze: Tensor | None = None
        self.at_k = nn.ModuleList([ExplanationMetrics(maps, nss_variant, prefix="",
                                                      only=("kld", "nss"))
                                   for _ in range(ensemble_size if ensemble_size > 1 else 0)])

    def set_mean_gaze(self, mean_gaze: Tensor) -> None:
        """(H, W) the training split's mean gaze map (:func:`.references.mean_gaze_map`)."""
        self.mean_gaze = mean_gaze

    def update(self, batch: dict[str, Tensor], maps: Tensor, preds: Tensor,
               label_maps: Tensor | None = None, members: Tensor | None = None,
               grid: tuple[int, int] | None = None) -> None:
        """One batch: ``maps`` (B, H, W) of the predicted class, ``preds`` (B,), the true
        label's maps, the members' maps (N, B, H, W) and the explained layer's grid (h, w)."""
        labels = batch["label"]
        self.main.update(maps, batch)
        self.correct.update(maps, batch, rows=preds == labels)
        for k, metrics in enumerate(self.per_class):
            metrics.update(maps, batch, rows=labels == k)
        if label_maps is not None:
            self.label.update(label_maps, batch)
        if members is not None and len(self.at_k):
            for k, metrics in enumerate(self.at_k, start=1):
                # k = N is the explanation itself (not a re-summed copy), so that the curve's
                # last point is the run's test/kld exactly; below N, every cyclic subset.
                if k == len(self.at_k):
                    metrics.update(maps, batch)
                    continue
                for subset in cyclic_subset_means(members.float(), k):
                    metrics.update(subset, batch)
        if "uniform" in self.refs:
            self.refs["uniform"].update(uniform_maps(maps), batch)
            if self.mean_gaze is not None:
                ref = self.mean_gaze.to(maps.device).expand_as(maps)
                self.refs["mean_gaze"].update(ref, batch)
                if grid is not None:
                    self.refs["mean_gaze_grid"].update(grid_like_cam(ref, grid), batch)
            if grid is not None:
                self.refs["own_gaze_grid"].update(own_gaze_grid(batch["gaze"], grid), batch)

    def compute(self, split: str = "test") -> dict[str, float | list[float] | None]:
        """Plain numbers under their ``metrics.json`` keys (NaN where nothing was scored)."""
        out: dict[str, float | list[float] | None] = {}

        def put(prefix: str, metrics: ExplanationMetrics) -> None:
            for name, value in metrics.compute().items():
                out[f"{prefix}{name}"] = float(value)

        put(f"{split}/", self.main)
        if self.main.sources.get("nss") == "fixations":
            out[f"{split}/no_fixation_images"] = float(self.main.metrics["nss"].num_skipped)
        put(f"{split}_label/", self.label)
        put(f"{split}_correct/", self.correct)
        for name, metrics in zip(self.class_names, self.per_class):
            put(f"{split}_class/{name}/", metrics)
        if split == "test":
            for name, metrics in self.refs.items():
                if name.startswith("mean_gaze") and self.mean_gaze is None:
                    continue
                put(f"ref/{name}/", metrics)
        if len(self.at_k):
            curves = [m.compute() for m in self.at_k]
            for metric in ("kld", "nss"):
                if all(metric in c for c in curves):
                    out[f"{split}/{metric}_at_k"] = [_finite(c[metric]) for c in curves]
        return out

    def reset(self) -> None:
        for m in self.modules():
            if isinstance(m, ExplanationMetrics):
                m.reset()


def _finite(value: Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None

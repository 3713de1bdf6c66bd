"""The test-time explanation metrics of a run, chosen by which human maps the data has."""

from __future__ import annotations

from torch import Tensor, nn

from mimic_runner.errors import UserError
from mimic_runner.metrics.torchmetrics_wrappers import (
    ConfounderShare,
    SaliencyAUCJudd,
    SaliencyCC,
    SaliencyKLD,
    SaliencyNSS,
    SaliencySIM,
)

NSS_CHOICES = ("auto", "fixations", "weighted", "quantile", "positive")


class ExplanationMetrics(nn.Module):
    """KLD, CC, SIM against ``gaze``; NSS and AUC-Judd against ``fixations``; the confounder share.

    ``nss_variant``: ``auto`` (fixations if the data has them, else the gaze-weighted NSS),
    ``fixations``, or a gaze variant (``weighted``, ``quantile``, ``positive``; see
    :func:`mimic_runner.metrics.saliency.nss_from_gaze`). The variant actually computed is in
    :attr:`nss_variant_used` and goes into ``metrics.json``.
    """

    def __init__(
        self, maps: tuple[str, ...], nss_variant: str = "auto", prefix: str = "test/"
    ) -> None:
        super().__init__()
        if nss_variant not in NSS_CHOICES:
            raise UserError(
                f"explain.nss_variant='{nss_variant}': choose one of {', '.join(NSS_CHOICES)}"
            )
        self.prefix = prefix
        self.sources: dict[str, str] = {}  # metric name -> batch key of its target
        metrics: dict[str, nn.Module] = {}
        if "gaze" in maps:
            metrics.update(kld=SaliencyKLD(), cc=SaliencyCC(), sim=SaliencySIM())
            self.sources.update(kld="gaze", cc="gaze", sim="gaze")
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
        self.metrics = nn.ModuleDict(metrics)

    def update(self, maps: Tensor, batch: dict[str, Tensor]) -> None:
        """``maps`` (B, H, W) explanations of the images in ``batch``."""
        for name, metric in self.metrics.items():
            metric.update(maps.float(), batch[self.sources[name]])

    def compute(self) -> dict[str, Tensor]:
        return {f"{self.prefix}{name}": m.compute().float() for name, m in self.metrics.items()}

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()

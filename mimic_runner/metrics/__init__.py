"""Metrics: saliency-map agreement (pure functions) and their torchmetrics wrappers.

See :mod:`mimic_runner.metrics.saliency` for the definitions and the degenerate-input
conventions, and :mod:`mimic_runner.metrics.torchmetrics_wrappers` for the dataset means.
"""

from mimic_runner.metrics.saliency import (
    auc_judd,
    cc,
    confounder_share,
    kld,
    nss,
    nss_from_gaze,
    sim,
)
from mimic_runner.metrics.torchmetrics_wrappers import (
    ConfounderShare,
    SaliencyAUCJudd,
    SaliencyCC,
    SaliencyKLD,
    SaliencyNSS,
    SaliencySIM,
)

__all__ = [
    "ConfounderShare",
    "SaliencyAUCJudd",
    "SaliencyCC",
    "SaliencyKLD",
    "SaliencyNSS",
    "SaliencySIM",
    "auc_judd",
    "cc",
    "confounder_share",
    "kld",
    "nss",
    "nss_from_gaze",
    "sim",
]

"""LightningModule of the attention-branch network (``model=attention_branch``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from mimic_runner.errors import UserError
from mimic_runner.models.attention_branch import AttentionBranchNet
from mimic_runner.models.classifier import BackboneFactory
from mimic_runner.models.output import ModelOutput
from mimic_runner.training.modules.base import ExplainedClassifier
from mimic_runner.traits import ModelTraits

EXPLANATIONS = ("attention", "gradcam")


def attention_maps(out: ModelOutput, size: tuple[int, int] | None = None) -> Tensor:
    """The attention map of a forward pass as (B, H, W) in [0, 1], resized to ``size``."""
    m = out.extras["attention"]
    if size is not None and tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return m[:, 0]


class AttentionBranchModule(ExplainedClassifier):
    """ABN: ``CE(perception) + attention_weight · CE(attention branch)`` (Fukui et al. 2019).

    ``explanation``: ``attention`` (default: the map M(x) the network multiplies its input
    with) or ``gradcam`` (Grad-CAM of the perception branch, like every other model).
    """

    default_traits: ClassVar[ModelTraits] = ModelTraits(trains_explanation="attention")

    def __init__(self, *args: Any, explanation: str = "attention", attention_weight: float = 1.0,
                 apply_at: str | int = "input",
                 attention_channels: Sequence[int] = (16, 32, 32, 32), **kwargs: Any) -> None:
        self.validate_config({"explanation": explanation,
                              "ensemble_size": kwargs.get("ensemble_size", 1)})
        self.apply_at = apply_at
        self.attention_channels = tuple(attention_channels)
        super().__init__(*args, **kwargs)
        self.explanation = explanation
        self.attention_weight = float(attention_weight)
        self.attention_acc = MulticlassAccuracy(num_classes=self.num_classes, average="micro")

    @classmethod
    def validate_config(cls, model_cfg: Mapping[str, Any]) -> None:
        super().validate_config(model_cfg)
        explanation = model_cfg.get("explanation", "attention")
        if explanation not in EXPLANATIONS:
            raise UserError(f"model.explanation='{explanation}': use {' or '.join(EXPLANATIONS)}")

    def build_net(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                  explain_layer: int) -> nn.Module:
        return AttentionBranchNet(backbone, in_channels, num_classes, explain_layer=explain_layer,
                                  apply_at=self.apply_at,
                                  attention_channels=self.attention_channels)

    def loss(self, out: ModelOutput, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        y = batch["label"]
        ce_per = F.cross_entropy(out.logits, y)
        ce_att = F.cross_entropy(out.extras["attention_logits"], y)
        return ce_per + self.attention_weight * ce_att, {"ce_perception": ce_per.detach(),
                                                         "ce_attention": ce_att.detach()}

    def explain(self, out: ModelOutput, targets: Tensor, size: tuple[int, int],
                create_graph: bool = False) -> Tensor:
        if self.explanation == "gradcam":
            return super().explain(out, targets, size, create_graph=create_graph)
        # M(x) is class-agnostic, as in ABN's perception branch input: ``targets`` is unused.
        return attention_maps(out, size)

    def extra_test_metrics(self, out: ModelOutput, batch: dict[str, Tensor],
                           member_maps: Tensor | None) -> None:
        self.attention_acc.update(out.extras["attention_logits"], batch["label"])

    def extra_test_results(self) -> dict[str, float]:
        acc = float(self.attention_acc.compute())
        self.attention_acc.reset()
        return {"acc_attention_branch": acc}

    @torch.no_grad()
    def predict_attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Class probabilities (B, K) and attention maps (B, H, W) of normalised images."""
        out = self.net(x)
        return out.logits.softmax(-1), attention_maps(out)

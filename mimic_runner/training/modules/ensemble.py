"""LightningModule of the normal and explanation ensembles (``model=*ensemble*``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from mimic_runner.errors import UserError
from mimic_runner.explain.attribution import attribution_maps, gradient_shap
from mimic_runner.explain.consistency import (
    CONSISTENCIES,
    DISCRIMINATORS,
    DISTANCES,
    adversarial_consistency,
    consistency_to_mean,
    pairwise_consistency,
    pairwise_disagreement,
)
from mimic_runner.explain.gradcam import grad_cam
from mimic_runner.models.classifier import BackboneFactory
from mimic_runner.models.ensemble import EnsembleNet
from mimic_runner.models.output import ModelOutput
from mimic_runner.training.callbacks import epochs_from
from mimic_runner.training.modules.base import ExplainedClassifier
from mimic_runner.traits import ModelTraits

TRAIN_EXPLANATIONS = ("gradcam", "gradient_shap")


class EnsembleModule(ExplainedClassifier):
    """Normal and explanation ensembles of N sub-models.

    Loss = Σ_n CE_n + λ·consistency, where the consistency term (``consistency`` ≠ ``none``,
    after the warm-up) is computed from differentiable Grad-CAMs of every member on every
    training batch. The explanation is the unweighted mean of the members' Grad-CAMs for the
    ensemble's class.
    """

    default_traits: ClassVar[ModelTraits] = ModelTraits(kind="ensemble")

    def __init__(self, *args: Any, consistency: str = "none", distance: str = "mse",
                 lambda_consistency: float = 1.0, warmup_epochs: float = 0,
                 train_cam_target: str = "label", ensemble_impl: str = "loop",
                 disagreement_distance: str = "mse", train_explanation: str = "gradcam",
                 shap_samples: int = 5, shap_stdev: float = 0.0, consistency_every: int = 1,
                 discriminator: str = "conv", **kwargs: Any) -> None:
        self.validate_config({
            "consistency": consistency, "distance": distance,
            "lambda_consistency": lambda_consistency, "warmup_epochs": warmup_epochs,
            "train_cam_target": train_cam_target, "train_explanation": train_explanation,
            "discriminator": discriminator, "consistency_every": consistency_every,
            "shap_samples": shap_samples, "ensemble_size": kwargs.get("ensemble_size", 1)})
        self.ensemble_impl = ensemble_impl
        super().__init__(*args, **kwargs)
        self.consistency = consistency
        self.distance = distance
        self.lambda_consistency = lambda_consistency
        self.warmup_epochs = warmup_epochs
        self.train_cam_target = train_cam_target
        self.disagreement_distance = disagreement_distance
        self.train_explanation = train_explanation
        self.shap_samples = int(shap_samples)
        self.shap_stdev = float(shap_stdev)
        self.consistency_every = int(consistency_every)
        self.discriminator = (DISCRIMINATORS[discriminator](self.ensemble_size)
                              if consistency == "adversarial" else None)
        n = self.ensemble_size
        self.member_acc = nn.ModuleList([MulticlassAccuracy(num_classes=self.num_classes,
                                                            average="micro") for _ in range(n)])
        self._disagreement_sum = 0.0
        self._disagreement_count = 0

    @classmethod
    def validate_config(cls, model_cfg: Mapping[str, Any]) -> None:
        """The ensemble's keys, checked before anything starts."""
        super().validate_config(model_cfg)
        lam = model_cfg.get("lambda_consistency", 1.0)
        if not isinstance(lam, (int, float)) or isinstance(lam, bool) or lam < 0:
            raise UserError(f"model.lambda_consistency={lam}: use a number >= 0")
        for key, choices in (("consistency", CONSISTENCIES), ("distance", DISTANCES),
                             ("train_explanation", TRAIN_EXPLANATIONS),
                             ("discriminator", DISCRIMINATORS)):
            value = model_cfg.get(key)
            if value is not None and value not in choices:
                raise UserError(f"model.{key}='{value}': choose one of {', '.join(choices)}")
        warmup = model_cfg.get("warmup_epochs", 0)
        if not isinstance(warmup, (int, float)) or isinstance(warmup, bool) or warmup < 0:
            raise UserError(f"model.warmup_epochs={warmup}: use a number of epochs "
                            "(an integer >= 0) or a fraction of trainer.max_epochs in [0, 1)")
        target = model_cfg.get("train_cam_target", "label")
        if target not in ("label", "pred"):
            raise UserError(f"model.train_cam_target='{target}': use label or pred")
        for key in ("consistency_every", "shap_samples"):
            value = model_cfg.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"model.{key}={value}: use a whole number, 1 or more")

    def build_net(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                  explain_layer: int) -> nn.Module:
        return EnsembleNet(backbone, in_channels, num_classes, ensemble_size=self.ensemble_size,
                           impl=self.ensemble_impl, explain_layer=explain_layer)

    def member_maps(self, out: ModelOutput, targets: Tensor, size: tuple[int, int] | None,
                    create_graph: bool = False) -> Tensor:
        """Every member's Grad-CAM of ``targets`` (B,): (N, B, H, W), one autograd call."""
        assert out.member_logits is not None
        t = targets.unsqueeze(0).expand(out.member_logits.shape[:2])
        return grad_cam(out.member_logits, out.features, t, size=size, create_graph=create_graph)

    def explain(self, out: ModelOutput, targets: Tensor, size: tuple[int, int],
                create_graph: bool = False) -> Tensor:
        return self.member_maps(out, targets, size, create_graph).mean(dim=0)

    def member_training_maps(self, out: ModelOutput, targets: Tensor,
                             detach_weights: bool = False) -> Tensor:
        # Every member's map at the feature resolution: training terms need no upsampling.
        assert out.member_logits is not None
        t = targets.unsqueeze(0).expand(out.member_logits.shape[:2])
        return grad_cam(out.member_logits, out.features, t, size=None, create_graph=True,
                        detach_weights=detach_weights)

    def explain_with_members(self, out: ModelOutput, targets: Tensor, size: tuple[int, int]
                             ) -> tuple[Tensor, Tensor | None]:
        members = self.member_maps(out, targets, size)
        return members.mean(dim=0), members

    def warmup_length(self) -> int:
        """Epochs without the consistency term: ``warmup_epochs`` itself when >= 1, else that
        fraction of the trainer's ``max_epochs`` (rounded down), so that the same config warms up
        for 4 of 10 epochs in a full run and not at all in a 2-epoch smoke run."""
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        return epochs_from(self.warmup_epochs, max_epochs)

    def consistency_active(self) -> bool:
        """After the warm-up, on every ``consistency_every``-th epoch (the authors: every
        other one), starting with the first epoch after the warm-up."""
        after = self.current_epoch - self.warmup_length()
        return (self.consistency != "none" and self.lambda_consistency > 0 and after >= 0
                and after % self.consistency_every == 0)

    def member_attribution_maps(self, x: Tensor, targets: Tensor) -> Tensor:
        """Every member's differentiable ``|GradientSHAP|`` map of ``targets``: (N, B, H, W).

        The attribution passes run each member on copies of its buffers, so BatchNorm's
        running statistics stay those of the data (the passes see interpolations towards the
        baseline) and the training forward's autograd graph stays valid."""
        from torch.func import functional_call

        net = self.net

        def member(n: int) -> Any:
            backbone, head = net.backbones[n], net.heads[n]
            buffers = {k: v.clone() for k, v in backbone.named_buffers()}
            return lambda z: head(functional_call(backbone, buffers, (z,)).mean(dim=(-2, -1)))

        return torch.stack([attribution_maps(gradient_shap(
            member(n), x, targets, baselines=0.0, n_samples=self.shap_samples,
            stdev=self.shap_stdev, create_graph=True)) for n in range(self.ensemble_size)])

    def loss(self, out: ModelOutput, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        assert out.member_logits is not None
        n, b, k = out.member_logits.shape
        y = batch["label"]
        ce = F.cross_entropy(out.member_logits.reshape(n * b, k), y.repeat(n),
                             reduction="sum") / b  # Σ over members of each member's mean CE
        logs: dict[str, Tensor] = {"ce": ce.detach()}
        if not self.consistency_active():
            return ce, logs
        if self.train_explanation == "gradient_shap":
            targets = y if self.train_cam_target == "label" else out.logits.argmax(-1)
            maps = self.member_attribution_maps(batch["image"], targets)
        else:  # shared with the gaze-guidance term when both explain the same class
            maps = self.training_maps(out, batch, self.train_cam_target)
        if self.consistency == "mean":
            term = consistency_to_mean(maps, self.distance)
        elif self.consistency == "pairwise":
            term = pairwise_consistency(maps, self.distance)
        else:
            assert self.discriminator is not None
            term, d_acc = adversarial_consistency(maps, self.discriminator)
            logs["disc_acc"] = d_acc
        logs["consistency"] = term.detach()
        return ce + self.lambda_consistency * term, logs

    def extra_test_metrics(self, out: ModelOutput, batch: dict[str, Tensor],
                           member_maps: Tensor | None) -> None:
        assert out.member_logits is not None and member_maps is not None
        for n, metric in enumerate(self.member_acc):
            metric.update(out.member_logits[n], batch["label"])
        # Per image: mean pairwise distance between the members' maps of the explained class.
        d = pairwise_disagreement(member_maps, self.disagreement_distance)
        self._disagreement_sum += float(d.sum())
        self._disagreement_count += int(d.numel())

    def extra_test_results(self) -> dict[str, float]:
        out = {}
        for n, metric in enumerate(self.member_acc):
            out[f"acc_member_{n}"] = float(metric.compute())
            metric.reset()
        if self._disagreement_count:
            out["cam_disagreement"] = self._disagreement_sum / self._disagreement_count
        self._disagreement_sum, self._disagreement_count = 0.0, 0
        return out

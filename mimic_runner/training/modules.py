"""LightningModules of the paper's models. They only wire networks, losses and metrics together.

Every module exposes ``explain(out, targets, size)`` — the map evaluated against human
attention — so evaluation, reports and explanation tools treat all models alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

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
from mimic_runner.metrics.evaluation import RunEvaluation
from mimic_runner.metrics.references import mean_gaze_map
from mimic_runner.models.classifier import BackboneFactory, ClassifierNet
from mimic_runner.models.ensemble import EnsembleNet
from mimic_runner.models.output import ModelOutput
from mimic_runner.models.unet import UNetNet
from mimic_runner.training.callbacks import epochs_from

TRAIN_EXPLANATIONS = ("gradcam", "gradient_shap")
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class ExplainedClassifier(L.LightningModule):
    """Base: cross-entropy training, accuracy/AUROC, and test-time explanation metrics.

    Subclasses build ``self.net`` (returning :class:`ModelOutput`) and may extend
    :meth:`loss`. ``explain_target`` chooses the class explained at test time (``pred`` or
    ``label``).
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        in_channels: int,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        name: str = "model",
        ensemble_size: int = 1,
        explain_target: str = "pred",
        explain_layer: int = -1,
        maps: tuple[str, ...] = (),
        nss_variant: str = "auto",
        channels_last: bool = False,
        class_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        if explain_target not in ("pred", "label"):
            raise UserError(f"explain.target='{explain_target}': use pred or label")
        self.model_name = name
        self.num_classes = num_classes
        self.ensemble_size = ensemble_size
        self.explain_target = explain_target
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net = self.build_net(backbone, in_channels, num_classes, explain_layer)
        if channels_last:  # NHWC conv weights: ~30% faster small_cnn steps on CPU (BENCHMARKS.md)
            self.net.to(memory_format=torch.channels_last)
        kw = {"num_classes": num_classes}
        def accuracy_auroc(prefix: str = "") -> MetricCollection:
            return MetricCollection({"acc": MulticlassAccuracy(average="micro", **kw),
                                     "auroc": MulticlassAUROC(average="macro", **kw)},
                                    prefix=prefix)

        self.val_metrics = accuracy_auroc("val/")
        self.test_metrics = accuracy_auroc()  # its loop's split prefixes the keys
        self.train_acc = MulticlassAccuracy(average="micro", **kw)
        names = tuple(class_names) or tuple(str(k) for k in range(num_classes))
        self.evaluation = RunEvaluation(maps=tuple(maps), class_names=names,
                                        nss_variant=nss_variant, ensemble_size=ensemble_size)
        # The split a test loop evaluates ("test", or "val" for the tuning pass): the prefix
        # of its keys. The last test loop's results, as plain numbers and lists.
        self.eval_split = "test"
        self.test_results: dict[str, Any] = {}
        # (mean, std) of (1, C, 1, 1) that inputs are normalised with; set by load_checkpoint.
        self.input_normalisation: tuple[Tensor, Tensor] | None = None

    # -- to be specialised ---------------------------------------------------------------------
    def build_net(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                  explain_layer: int) -> nn.Module:
        return ClassifierNet(backbone, in_channels, num_classes, explain_layer=explain_layer)

    def loss(self, out: ModelOutput, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss and extra values to log (under ``train/``)."""
        return F.cross_entropy(out.logits, batch["label"]), {}

    def explain(self, out: ModelOutput, targets: Tensor, size: tuple[int, int],
                create_graph: bool = False) -> Tensor:
        """The model's explanation of ``targets``: (B, H, W) maps in [0, 1]."""
        return grad_cam(out.logits, out.features, targets, size=size, create_graph=create_graph)

    # -- Lightning ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> ModelOutput:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.net(batch["image"])
        loss, extras = self.loss(out, batch)
        bs = len(batch["label"])
        self.train_acc(out.logits.detach(), batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=bs)
        for k, v in extras.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.net(batch["image"])
        loss = F.nll_loss(out.logits.log_softmax(-1), batch["label"])
        self.val_metrics.update(out.logits, batch["label"])
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def explain_with_members(self, out: ModelOutput, targets: Tensor, size: tuple[int, int]
                             ) -> tuple[Tensor, Tensor | None]:
        """The explanation (B, H, W) and, for ensembles, the members' maps (N, B, H, W)."""
        return self.explain(out, targets, size), None

    def explain_batch(self, batch: dict[str, Tensor], with_label_maps: bool = False
                      ) -> tuple[ModelOutput, Tensor, Tensor | None]:
        """Forward + explanation of a batch, with gradients on even under ``no_grad``.

        Returns the (detached) output, the maps (B, H, W) and the members' maps or None. With
        ``with_label_maps`` the maps of the true label are in ``out.extras["label_maps"]``
        (the same forward pass; the maps themselves when the explained class is the label).
        """
        x = batch["image"]
        size = tuple(x.shape[-2:])
        with torch.enable_grad():
            out = self.net(x)
            pred = out.logits.argmax(-1)
            targets = pred if self.explain_target == "pred" else batch["label"]
            maps, members = self.explain_with_members(out, targets, size=size)
            label_maps = None
            if with_label_maps:
                label_maps = (maps if self.explain_target == "label"
                              else self.explain(out, batch["label"], size=size))
        extras = {k: v.detach() for k, v in out.extras.items()}
        if label_maps is not None:
            extras["label_maps"] = label_maps.detach()
        out = ModelOutput(logits=out.logits.detach(), features=out.features.detach(),
                          member_logits=None if out.member_logits is None
                          else out.member_logits.detach(), extras=extras)
        return out, maps.detach(), None if members is None else members.detach()

    def on_test_epoch_start(self) -> None:
        # The reference map "mean gaze" averages the training split's gaze (never test's).
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        train = getattr(dm, "splits", {}).get("train") if dm is not None else None
        if train is not None and "gaze" in train.tensors and len(train.tensors["gaze"]):
            self.evaluation.set_mean_gaze(mean_gaze_map(train.tensors["gaze"]).to(self.device))

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        out, maps, members = self.explain_batch(batch, with_label_maps=True)
        preds = out.logits.argmax(-1)
        self.test_metrics.update(out.logits, batch["label"])
        self.evaluation.update(batch, maps, preds, label_maps=out.extras["label_maps"],
                               members=members, grid=tuple(out.features.shape[-2:]))
        self.extra_test_metrics(out, batch, members)
        return {"maps": maps, "logits": out.logits, "index": batch["index"]}

    def extra_test_metrics(self, out: ModelOutput, batch: dict[str, Tensor],
                           member_maps: Tensor | None) -> None:
        """Hook for model-specific test metrics (reported by :meth:`extra_test_results`)."""

    def extra_test_results(self) -> dict[str, float]:
        """Model-specific results of the test loop, keys without the split prefix."""
        return {}

    def on_test_epoch_end(self) -> None:
        split = self.eval_split
        results: dict[str, Any] = {f"{split}/{k}": float(v)
                                   for k, v in self.test_metrics.compute().items()}
        results.update(self.evaluation.compute(split))
        results.update({f"{split}/{k}": v for k, v in self.extra_test_results().items()})
        self.test_results = results
        # Scalars to the loggers (lists and undefined values live in metrics.json only).
        self.log_dict({k: v for k, v in results.items()
                       if isinstance(v, float) and math.isfinite(v)})
        self.test_metrics.reset()
        self.evaluation.reset()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}

    # Global RNG state travels with the checkpoint, so a resumed run draws the same dropout
    # masks etc. as an uninterrupted one.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if getattr(dm, "mean", None) is not None:  # what load_checkpoint's users feed it
            checkpoint["input_normalisation"] = {"mean": dm.mean.flatten().tolist(),
                                                 "std": dm.std.flatten().tolist()}
        checkpoint["rng_torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["rng_cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_torch" in checkpoint:
            torch.set_rng_state(checkpoint["rng_torch"])
        if "rng_cuda" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng_cuda"])


class BaselineModule(ExplainedClassifier):
    """The paper's baseline: backbone, global average pooling, linear head, cross-entropy."""


class UNetModule(ExplainedClassifier):
    """Gaze-supervised U-Net: ``γ·CE + (1−γ)·gaze_loss`` (Karargyris et al. 2021).

    ``gaze_loss``: ``bce`` (default, BCE-with-logits against the heatmap scaled to [0, 1] per
    image, as in the EGD code) or ``kl`` (KL(gaze ‖ softmax of the logits over pixels)).
    """

    def __init__(self, *args: Any, gamma: float = 0.41731, gaze_loss: str = "bce",
                 decoder_channels: tuple[int, ...] = (128, 64, 32, 16), **kwargs: Any) -> None:
        self.decoder_channels = tuple(decoder_channels)
        super().__init__(*args, **kwargs)
        if "gaze" not in kwargs.get("maps", ()):
            raise UserError("model=improved_unet needs a 'gaze' map in the training data; this "
                            "dataset has none (choose a dataset with human attention)")
        if gaze_loss not in ("bce", "kl"):
            raise UserError(f"model.gaze_loss='{gaze_loss}': use bce or kl")
        self.gamma = gamma
        self.gaze_loss = gaze_loss

    def build_net(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                  explain_layer: int) -> nn.Module:
        return UNetNet(backbone, in_channels, num_classes, decoder_channels=self.decoder_channels)

    def loss(self, out: ModelOutput, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ce = F.cross_entropy(out.logits, batch["label"])
        seg_logits = out.extras["gaze_logits"].squeeze(1)
        gaze = batch["gaze"].float()
        if self.gaze_loss == "bce":
            peak = gaze.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
            seg = F.binary_cross_entropy_with_logits(seg_logits, gaze / peak)
        else:
            target = gaze.flatten(1)
            target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
            logq = seg_logits.flatten(1).log_softmax(-1)
            seg = (target * (target.clamp_min(1e-12).log() - logq)).sum(-1).mean()
        return self.gamma * ce + (1 - self.gamma) * seg, {"ce": ce.detach(),
                                                                "gaze_loss": seg.detach()}


class EnsembleModule(ExplainedClassifier):
    """Normal and explanation ensembles of N sub-models.

    Loss = Σ_n CE_n + λ·consistency, where the consistency term (``consistency`` ≠ ``none``,
    after the warm-up) is computed from differentiable Grad-CAMs of every member on every
    training batch. The explanation is the unweighted mean of the members' Grad-CAMs for the
    ensemble's class.
    """

    def __init__(self, *args: Any, consistency: str = "none", distance: str = "mse",
                 lambda_consistency: float = 1.0, warmup_epochs: float = 0,
                 train_cam_target: str = "label", ensemble_impl: str = "loop",
                 disagreement_distance: str = "mse", train_explanation: str = "gradcam",
                 shap_samples: int = 5, shap_stdev: float = 0.0, consistency_every: int = 1,
                 discriminator: str = "conv", **kwargs: Any) -> None:
        self.ensemble_impl = ensemble_impl
        super().__init__(*args, **kwargs)
        if consistency not in CONSISTENCIES:
            raise UserError(f"model.consistency='{consistency}': choose one of "
                            f"{', '.join(CONSISTENCIES)}")
        if distance not in DISTANCES:
            raise UserError(f"model.distance='{distance}': choose one of {', '.join(DISTANCES)}")
        if warmup_epochs < 0:
            raise UserError(f"model.warmup_epochs={warmup_epochs}: use a number of epochs "
                            "(an integer >= 0) or a fraction of trainer.max_epochs in [0, 1)")
        if train_cam_target not in ("label", "pred"):
            raise UserError(f"model.train_cam_target='{train_cam_target}': use label or pred")
        if train_explanation not in TRAIN_EXPLANATIONS:
            raise UserError(f"model.train_explanation='{train_explanation}': choose one of "
                            f"{', '.join(TRAIN_EXPLANATIONS)}")
        if discriminator not in DISCRIMINATORS:
            raise UserError(f"model.discriminator='{discriminator}': choose one of "
                            f"{', '.join(DISCRIMINATORS)}")
        if int(consistency_every) < 1 or int(shap_samples) < 1:
            raise UserError("model.consistency_every and model.shap_samples: use 1 or more")
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
        targets = y if self.train_cam_target == "label" else out.logits.argmax(-1)
        if self.train_explanation == "gradient_shap":
            maps = self.member_attribution_maps(batch["image"], targets)
        else:
            # Maps at the feature resolution: the loss needs no upsampling, and it is cheaper.
            maps = self.member_maps(out, targets, size=None, create_graph=True)
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

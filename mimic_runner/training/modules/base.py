"""The base LightningModule of every model, and the paper's baseline.

Every module exposes ``explain(out, targets, size)`` — the map evaluated against human
attention — so evaluation, reports and explanation tools treat all models alike. Modules only
wire networks, losses and metrics together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from mimic_runner.errors import UserError
from mimic_runner.explain.gradcam import grad_cam
from mimic_runner.explain.guidance import GUIDANCE_DISTANCES, GUIDANCE_TARGETS, gaze_guidance
from mimic_runner.metrics.evaluation import RunEvaluation
from mimic_runner.metrics.references import mean_gaze_map
from mimic_runner.models.classifier import BackboneFactory, ClassifierNet
from mimic_runner.models.output import ModelOutput
from mimic_runner.training.callbacks import epochs_from
from mimic_runner.training.modules.describe import FACTORY_ARGS, describe_module
from mimic_runner.traits import ModelTraits


@dataclass(frozen=True)
class GuidanceSettings:
    """``model.gaze_guidance``: the weight of the gaze-guidance term (0 = off), its distance,
    its warm-up (epochs, or a fraction of ``trainer.max_epochs`` as for the consistency term) and
    the explained class it guides (:mod:`mimic_runner.explain.guidance`)."""

    weight: float = 0.0
    distance: str = "kl"
    warmup_epochs: float = 0.0
    target: str = "label"
    through_weights: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> GuidanceSettings:
        """Checked settings from the config node (None: off); one UserError line when wrong."""
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise UserError(f"model.gaze_guidance={cfg!r}: give weight, distance, warmup_epochs "
                            "and target (or leave the defaults)")
        unknown = sorted(set(cfg) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"model.gaze_guidance.{unknown[0]}: no such key; use weight, "
                            "distance, warmup_epochs, target or through_weights")
        s = cls(**dict(cfg))
        for key in ("weight", "warmup_epochs"):
            v = getattr(s, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise UserError(f"model.gaze_guidance.{key}={v}: use a finite number >= 0")
        if s.distance not in GUIDANCE_DISTANCES:
            raise UserError(f"model.gaze_guidance.distance='{s.distance}': choose one of "
                            f"{', '.join(GUIDANCE_DISTANCES)}")
        if not isinstance(s.through_weights, bool):
            raise UserError(f"model.gaze_guidance.through_weights={s.through_weights!r}: use "
                            "true or false")
        if s.target not in GUIDANCE_TARGETS:
            raise UserError(f"model.gaze_guidance.target='{s.target}': choose one of "
                            f"{', '.join(GUIDANCE_TARGETS)}")
        return s


OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class ExplainedClassifier(L.LightningModule):
    """Base: cross-entropy training, accuracy/AUROC, and test-time explanation metrics.

    Subclasses build ``self.net`` (returning :class:`ModelOutput`) and may extend
    :meth:`loss`. ``explain_target`` chooses the class explained at test time (``pred`` or
    ``label``). ``traits`` (``model.traits``, :class:`~mimic_runner.traits.ModelTraits`) say
    what the model is; :attr:`default_traits` when the config gives none. ``image_size``
    (H, W) of the data, recorded only. Every module saves its own description as its
    hyper-parameters (:func:`~mimic_runner.training.modules.describe.describe_module`).
    """

    # What a model of this class is when its config gives no traits (built directly, or an old
    # checkpoint); a config's traits must keep the class's kind.
    default_traits: ClassVar[ModelTraits] = ModelTraits()

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
        traits: Mapping[str, Any] | ModelTraits | None = None,
        gaze_guidance: Mapping[str, Any] | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        # The module describes itself: Lightning gathers the constructor arguments (this
        # class's and every subclass's); describe_module turns them into the config sections
        # and data shape that load_checkpoint rebuilds it from (factories as Hydra configs),
        # which replace the raw arguments as the hyper-parameters.
        self.save_hyperparameters(ignore=list(FACTORY_ARGS), logger=False)
        args = {**self.hparams, "backbone": backbone, "optimizer": optimizer,
                "scheduler": scheduler}
        self.hparams.clear()
        self.save_hyperparameters(describe_module(type(self), args), logger=False)
        self.guidance = GuidanceSettings.from_config(gaze_guidance)
        # The training Grad-CAMs of one step, shared by its terms (None outside a step).
        self._step_maps: dict[tuple[str, bool], Tensor] | None = None
        if explain_target not in ("pred", "label"):
            raise UserError(f"explain.target='{explain_target}': use pred or label")
        self.traits = self.traits_of({"traits": traits})
        if self.traits.takes_gaze and "gaze" not in maps:
            raise UserError(f"model={name} needs a 'gaze' map in the training data; this "
                            "dataset has none (choose a dataset with human attention)")
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
    @classmethod
    def validate_config(cls, model_cfg: Mapping[str, Any]) -> None:
        """Refuse ``model.*`` values this class cannot train with, one :class:`UserError` line
        each. The run's pre-flight calls it with the composed ``model`` node (before anything
        starts); subclasses extend it with their own keys and call it from ``__init__``."""
        ensemble = cls.traits_of(model_cfg).is_ensemble
        n = model_cfg.get("ensemble_size", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < (2 if ensemble else 1):
            raise UserError(f"model.ensemble_size={n}: an ensemble needs at least 2 members"
                            if ensemble else f"model.ensemble_size={n}: use 1")

    @classmethod
    def traits_of(cls, model_cfg: Mapping[str, Any]) -> ModelTraits:
        """The model's traits: ``model.traits`` over :attr:`default_traits`, of this class's
        kind (one :class:`UserError` line otherwise)."""
        traits = ModelTraits.of(model_cfg.get("traits"), default=cls.default_traits)
        if traits.kind != cls.default_traits.kind:
            raise UserError(f"model.traits.kind={traits.kind}: {cls.__name__} trains "
                            f"{cls.default_traits.kind} models; use kind: "
                            f"{cls.default_traits.kind}")
        return traits
        GuidanceSettings.from_config(model_cfg.get("gaze_guidance"))

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

    def training_maps(self, out: ModelOutput, batch: dict[str, Tensor], target: str = "label",
                      detach_weights: bool = False) -> Tensor:
        """Differentiable Grad-CAMs of the ``label`` or ``pred`` class at the explained layer's
        grid (no upsampling), for training terms: (B, h, w), or (N, B, h, w) for ensembles.
        Computed once per training step, however many terms use them. ``detach_weights``:
        differentiable through the feature maps only (see :func:`grad_cam`)."""
        memo, key = self._step_maps, (target, detach_weights)
        if memo is None or key not in memo:
            targets = batch["label"] if target == "label" else out.logits.argmax(-1)
            maps = self.member_training_maps(out, targets, detach_weights)
            if memo is None:  # called outside training_loss: nothing to share
                return maps
            memo[key] = maps
        return memo[key]

    def member_training_maps(self, out: ModelOutput, targets: Tensor,
                             detach_weights: bool = False) -> Tensor:
        """The maps of :meth:`training_maps`; ensembles return every member's."""
        return grad_cam(out.logits, out.features, targets, size=None, create_graph=True,
                        detach_weights=detach_weights)

    def guidance_active(self) -> bool:
        """The gaze-guidance term is on: a positive weight, after its warm-up."""
        if self.guidance.weight <= 0:
            return False
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        return self.current_epoch >= epochs_from(self.guidance.warmup_epochs, max_epochs)

    # -- Lightning ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> ModelOutput:
        return self.net(x)

    def on_fit_start(self) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        maps = getattr(dm, "maps", None)
        if self.guidance.weight > 0 and maps is not None and "gaze" not in maps:
            raise UserError("model.gaze_guidance.weight > 0 needs gaze maps in the training "
                            "data, and this dataset has none; use a dataset with a 'gaze' key "
                            "or set model.gaze_guidance.weight=0")

    def training_loss(self, out: ModelOutput, batch: dict[str, Tensor]
                      ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`loss` plus the gaze-guidance term when it is on (training batches only:
        validation and test images' gaze is never used before scoring)."""
        self._step_maps = {}
        try:
            loss, extras = self.loss(out, batch)
            if self.guidance_active():
                maps = self.training_maps(out, batch, self.guidance.target,
                                          detach_weights=not self.guidance.through_weights)
                term = gaze_guidance(maps, batch["gaze"], self.guidance.distance)
                loss = loss + self.guidance.weight * term
                extras["guidance"] = term.detach()
        finally:
            self._step_maps = None
        return loss, extras

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.net(batch["image"])
        loss, extras = self.training_loss(out, batch)
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

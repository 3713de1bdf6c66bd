"""Lightning callbacks that write a run's explanation artefacts, and the checkpoint writer."""

from __future__ import annotations

import io
import math
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from mimic_runner.io import write_bytes_atomic
from mimic_runner.rundir import RunDir


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, made atomic on local disks.

    Lightning's own "atomic" save writes through fsspec, whose local transaction puts the file
    in the system temp folder and moves it over: across file systems that move is a copy, and
    a full disk left a truncated ``last.ckpt``. Here the checkpoint is serialised in memory (as
    Lightning does) and written to a temporary name in its own folder, flushed, then renamed,
    so a checkpoint file is always either the previous one or the new one, complete.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote: Lightning's fsspec
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(path, buffer.getbuffer())


class ExplanationWriter(L.Callback):
    """Collects the test-set maps from ``test_step`` and writes the run's ``explanations.h5``
    (:meth:`~mimic_runner.rundir.RunDir.write_explanations`)."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self._rows: list[dict[str, Tensor]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    @staticmethod
    def _writes(pl_module: L.LightningModule) -> bool:
        # Only the test split's pass is stored (a tuning pass on val is not).
        return getattr(pl_module, "eval_split", "test") == "test"

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if not self._writes(pl_module):
            return
        self._rows.append({
            "maps": outputs["maps"].to(torch.float16).cpu(),
            "probabilities": outputs["logits"].float().softmax(-1).cpu(),
            "labels": batch["label"].cpu(),
            "index": outputs["index"].cpu(),
        })

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._rows or not self._writes(pl_module):
            return
        cat = {k: torch.cat([r[k] for r in self._rows]).numpy() for k in self._rows[0]}
        dm = trainer.datamodule  # type: ignore[attr-defined]
        self.run_dir.write_explanations(
            maps=cat["maps"], labels=cat["labels"], probabilities=cat["probabilities"],
            ids=np.asarray(dm.ids["test"])[cat["index"]], class_names=list(dm.class_names),
            explain_target=getattr(pl_module, "explain_target", "pred"),
            model=getattr(pl_module, "model_name", ""))
        self._rows = []


class MemberCamSnapshot(L.Callback):
    """Saves each ensemble member's mean validation Grad-CAM at chosen epochs (paper Figs 3-4).

    ``epochs`` are 1-based (epoch 1 = after the first training epoch). Writes ``member_cams.h5``
    with one dataset ``epoch_<e>`` of shape (N, H, W) per saved epoch (mean over the validation
    split of each member's min-max normalised Grad-CAM of the true class) and ``mean_image``.
    """

    def __init__(self, run_dir: RunDir, epochs: list[int] | tuple[int, ...] = (1, 6),
                 max_batches: int | None = None) -> None:
        self.run_dir = run_dir
        self.epochs = {int(e) for e in epochs}
        self.max_batches = max_batches
        self._sum: Tensor | None = None
        self._img: Tensor | None = None
        self._count = 0

    def _active(self, trainer: L.Trainer) -> bool:
        return (trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
                and trainer.current_epoch + 1 in self.epochs)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sum, self._img, self._count = None, None, 0

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not self._active(trainer) or not hasattr(pl_module, "member_maps"):
            return
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        x = batch["image"]
        with torch.enable_grad():
            out = pl_module(x)
            maps = pl_module.member_maps(out, batch["label"], size=tuple(x.shape[-2:]))
        s = maps.detach().sum(dim=1).float().cpu()
        img = x.detach().mean(dim=1).sum(dim=0).float().cpu()
        self._sum = s if self._sum is None else self._sum + s
        self._img = img if self._img is None else self._img + img
        self._count += x.shape[0]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._sum is None or not self._count:
            return
        mean_image = None if self._img is None else (self._img / self._count).numpy()
        self.run_dir.add_member_cams(trainer.current_epoch + 1,
                                     (self._sum / self._count).numpy(), mean_image)
        self._sum, self._img, self._count = None, None, 0


def epochs_from(value: float, max_epochs: int | None) -> int:
    """An epoch count: ``value`` itself when >= 1, else that fraction of ``max_epochs``
    (rounded down), so one config means 4 of 10 epochs in a full run and 0 in a smoke run."""
    if value < 0:
        raise ValueError(f"expected an epoch count or a fraction >= 0, got {value}")
    if value >= 1:
        return int(value)
    return math.floor(value * max_epochs) if max_epochs else 0


class WindowedModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose "best" is chosen only among epochs >= ``select_after``
    (an epoch count, or a fraction of ``max_epochs``), the same window for every model — so a
    checkpoint from inside an explanation ensemble's warm-up, when its consistency term was
    never active, cannot be the one tested. ``last.ckpt`` is written every epoch."""

    def __init__(self, *args: Any, select_after: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.select_after = float(select_after)
        self._last_written_step = -1

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]
                              ) -> None:
        if trainer.current_epoch >= epochs_from(self.select_after, trainer.max_epochs):
            super()._save_topk_checkpoint(trainer, monitor_candidates)
        # Lightning (2.6) writes last.ckpt only in a step that saved a top-k checkpoint: never
        # before the window, nor in an epoch that did not improve. A run stopped then (killed,
        # or requeued or timed out on SLURM) resumed from an older epoch or from nothing.
        self._save_last_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]
                              ) -> None:
        if self._last_written_step == trainer.global_step:  # once a step, not twice
            return
        self._last_written_step = trainer.global_step
        super()._save_last_checkpoint(trainer, monitor_candidates)

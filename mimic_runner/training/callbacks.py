"""Lightning callbacks that write a run's explanation artefacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import lightning as L
import numpy as np
import torch
from torch import Tensor

from mimic_runner.io import atomic_path


class ExplanationWriter(L.Callback):
    """Collects the test-set maps from ``test_step`` and writes ``explanations.h5`` atomically.

    Keys: ``maps`` float16 (N, H, W), ``labels`` int64, ``predictions`` int64, ``probabilities``
    float32 (N, K), ``ids`` utf-8 (the dataset's ids, in test-split order), plus attributes
    ``class_names``, ``explain_target``, ``model``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: list[dict[str, Tensor]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._rows.append({
            "maps": outputs["maps"].to(torch.float16).cpu(),
            "probabilities": outputs["logits"].float().softmax(-1).cpu(),
            "labels": batch["label"].cpu(),
            "index": outputs["index"].cpu(),
        })

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._rows:
            return
        cat = {k: torch.cat([r[k] for r in self._rows]).numpy() for k in self._rows[0]}
        dm = trainer.datamodule  # type: ignore[attr-defined]
        ids = np.asarray(dm.ids["test"])[cat["index"]]
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("maps", data=cat["maps"], compression="gzip", compression_opts=1)
            f.create_dataset("labels", data=cat["labels"].astype(np.int64))
            f.create_dataset("predictions",
                             data=cat["probabilities"].argmax(-1).astype(np.int64))
            f.create_dataset("probabilities", data=cat["probabilities"].astype(np.float32))
            f.create_dataset("ids", data=ids.astype(object), dtype=h5py.string_dtype("utf-8"))
            f.attrs["class_names"] = np.asarray(dm.class_names, dtype=object)
            f.attrs["explain_target"] = getattr(pl_module, "explain_target", "pred")
            f.attrs["model"] = getattr(pl_module, "model_name", "")
        self._rows = []


class MemberCamSnapshot(L.Callback):
    """Saves each ensemble member's mean validation Grad-CAM at chosen epochs (paper Figs 3-4).

    ``epochs`` are 1-based (epoch 1 = after the first training epoch). Writes ``member_cams.h5``
    with one dataset ``epoch_<e>`` of shape (N, H, W) per saved epoch (mean over the validation
    split of each member's min-max normalised Grad-CAM of the true class) and ``mean_image``.
    """

    def __init__(self, path: str | Path, epochs: list[int] | tuple[int, ...] = (1, 6),
                 max_batches: int | None = None) -> None:
        self.path = Path(path)
        self.epochs = {int(e) for e in epochs}
        self.max_batches = max_batches
        self._sum: Tensor | None = None
        self._img: Tensor | None = None
        self._count = 0

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch + 1 in self.epochs

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
        epoch = trainer.current_epoch + 1
        mean = (self._sum / self._count).numpy()
        mode = "a" if self.path.exists() else "w"
        # Append by rewriting atomically: copy the old datasets, add the new epoch.
        old: dict[str, np.ndarray] = {}
        if mode == "a":
            with h5py.File(self.path, "r") as f:
                old = {k: f[k][()] for k in f}
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as f:
            for k, v in old.items():
                f.create_dataset(k, data=v)
            if f"epoch_{epoch}" in f:
                del f[f"epoch_{epoch}"]
            f.create_dataset(f"epoch_{epoch}", data=mean.astype(np.float32))
            if "mean_image" not in f and self._img is not None:
                f.create_dataset("mean_image", data=(self._img / self._count).numpy())
        self._sum, self._img, self._count = None, None, 0

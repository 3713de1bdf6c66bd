"""A split's per-image explanations for the ``mimic-explain`` drivers: the test maps the run
stored in ``explanations.h5``, or maps recomputed with the trained model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mimic_runner.analysis.load import load_run, run_config
from mimic_runner.analysis.options import ExplainOptions
from mimic_runner.data.datamodule import HDF5DataModule
from mimic_runner.errors import UserError
from mimic_runner.log import progress_bar
from mimic_runner.rundir import RunDir
from mimic_runner.training.builders import build_datamodule

log = logging.getLogger(__name__)


@dataclass
class LocalMaps:
    """Per-image explanations of one split, in split order (or a subset of it)."""

    maps: Tensor  # (N, H, W) float32
    labels: Tensor  # (N,)
    predictions: Tensor  # (N,)
    indices: Tensor  # (N,) rows in the split
    ids: np.ndarray
    source: str  # "explanations.h5" or "recomputed"
    explain_target: str


@dataclass
class OpenedRun:
    run_dir: Path
    datamodule: HDF5DataModule
    class_names: list[str]
    module: Any = None
    checkpoint: Path | None = None
    model_name: str = ""
    explain_target: str = "pred"
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.warning(text)


def open_run(run_dir: Path, need_model: bool, checkpoint: str, device: torch.device,
             split: str) -> OpenedRun:
    """The run's DataModule (set up) and, if ``need_model``, its trained module on ``device``."""
    cfg = run_config(run_dir)  # "not a run directory" before "no checkpoint"
    if need_model:
        RunDir(run_dir).checkpoint(checkpoint)  # fail fast, before reading the data
        loaded = load_run(run_dir, checkpoint=checkpoint, device=device)
        dm, cfg = loaded.datamodule, loaded.cfg
        opened = OpenedRun(run_dir=run_dir, datamodule=dm, class_names=list(dm.class_names),
                           module=loaded.module, checkpoint=loaded.checkpoint,
                           model_name=str(cfg.model.name),
                           explain_target=str(loaded.module.explain_target))
    else:
        dm = build_datamodule(cfg)
        dm.setup()
        opened = OpenedRun(run_dir=run_dir, datamodule=dm, class_names=list(dm.class_names),
                           model_name=str(cfg.model.name),
                           explain_target=str(cfg.explain.target))
    if len(dm.splits[split]) == 0:
        raise UserError(f"{dm.resolve_path()}: the '{split}' split is empty; choose another "
                        "--split")
    if not bool(dm.info.attrs.get("aligned", True)):
        opened.note(f"dataset '{dm.name}' is marked aligned=false: pixel positions do not mean "
                    "the same place in every image, so global maps may not mean much")
    return opened


def needs_stored_maps(opts: ExplainOptions) -> bool:
    return opts.split == "test" and not opts.recompute


def check_stored_maps(opts: ExplainOptions) -> None:
    """Fail early (before any heavy work) when stored maps are needed but missing."""
    rd = opts.run
    if not rd.path.is_dir():
        raise UserError(f"{rd.path}: no such run directory")
    if needs_stored_maps(opts) and not rd.explanations.exists():
        raise UserError(f"{rd.explanations}: missing (the run did not finish its test); rerun "
                        "mimic-run, or pass --recompute to compute the maps from the checkpoint")


def subset_indices(n: int, max_images: int | None, seed: int = 0) -> Tensor:
    """All of ``n`` rows, or a seeded random subset of ``max_images`` rows kept in order."""
    if max_images is None or max_images >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_images].sort().values


def read_stored_maps(run: OpenedRun, max_images: int | None) -> LocalMaps:
    """The test maps of ``explanations.h5``. A run that tested only part of the split (e.g.
    ``trainer=smoke``) stored maps of those images: they are used, with a note."""
    rd = RunDir(run.run_dir)
    stored = rd.read_explanations()
    dm = run.datamodule
    split_ids = np.asarray(dm.ids["test"])
    row_of = {str(i): k for k, i in enumerate(split_ids)}
    unknown = [str(i) for i in stored.ids if str(i) not in row_of]
    if unknown:
        raise UserError(f"{rd.explanations}: image id '{unknown[0]}' is not in the test split of "
                        f"{dm.resolve_path()} (the dataset file changed since the run?); pass "
                        "--recompute")
    if len(stored.ids) < len(split_ids):
        run.note(f"{rd.explanations.name} holds {len(stored.ids)} of the {len(split_ids)} test "
                 "images (the run tested part of the split, e.g. trainer=smoke); using those; "
                 "pass --recompute for all")
    h, w = dm.size
    if tuple(stored.maps.shape[1:]) != (h, w):
        raise UserError(f"{rd.explanations}: maps are {tuple(stored.maps.shape[1:])}, images "
                        f"{h}x{w}; pass --recompute")
    pick = subset_indices(len(stored.ids), max_images).numpy()
    rows = torch.tensor([row_of[str(i)] for i in stored.ids[pick]], dtype=torch.long)
    return LocalMaps(maps=torch.from_numpy(stored.maps[pick]),
                     labels=torch.from_numpy(stored.labels[pick]),
                     predictions=torch.from_numpy(stored.predictions[pick]),
                     indices=rows, ids=stored.ids[pick], source=rd.explanations.name,
                     explain_target=stored.explain_target)


def recompute_maps(run: OpenedRun, split: str, rows: Tensor, batch_size: int,
                   device: torch.device) -> LocalMaps:
    """Per-image explanations of ``split`` with the trained model (``module.explain_batch``)."""
    dm, module = run.datamodule, run.module
    if module is None:
        raise UserError("recomputing explanations needs the run's model; pass --checkpoint")
    tensors = dm.splits[split].tensors
    maps, preds = [], []
    with progress_bar() as progress:
        task = progress.add_task(f"explaining {split}", total=len(rows))
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            batch = {k: v[idx].to(device) for k, v in tensors.items()}
            batch["image"] = dm.normalise(batch["image"])
            batch["index"] = idx.to(device)
            out, m, _ = module.explain_batch(batch)
            maps.append(m.float().cpu())
            preds.append(out.logits.argmax(-1).cpu())
            progress.advance(task, len(idx))
    return LocalMaps(maps=torch.cat(maps), labels=tensors["label"][rows].clone(),
                     predictions=torch.cat(preds), indices=rows,
                     ids=np.asarray(dm.ids[split])[rows.numpy()], source="recomputed",
                     explain_target=str(module.explain_target))


def local_maps(run: OpenedRun, opts: ExplainOptions, device: torch.device) -> LocalMaps:
    if needs_stored_maps(opts):
        return read_stored_maps(run, opts.max_images)
    rows = subset_indices(len(run.datamodule.splits[opts.split]), opts.max_images)
    return recompute_maps(run, opts.split, rows, opts.batch_size, device)


def split_mean_image(dm: HDF5DataModule, split: str, rows: Tensor) -> Tensor:
    """(C, H, W) mean of the split's images in [0, 1]."""
    return dm.splits[split].tensors["image"][rows].float().mean(0) / 255


def split_reference_maps(dm: HDF5DataModule, split: str, rows: Tensor) -> dict[str, Tensor]:
    """What the dataset itself says about the split, to read the global maps against:
    ``confounder_frequency`` (share of images with the shortcut artefact at each pixel) and
    ``gaze_mean`` (mean of the sum-normalised human gaze maps), when the file has them."""
    t = dm.splits[split].tensors
    out = {}
    if "confounder" in t:
        out["confounder_frequency"] = t["confounder"][rows].float().mean(0)
    if "gaze" in t:
        gaze = t["gaze"][rows].float()
        total = gaze.sum(dim=(-2, -1), keepdim=True)
        out["gaze_mean"] = torch.where(total > 0, gaze / total.clamp_min(1e-12), 0.0).mean(0)
    return out
